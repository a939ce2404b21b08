from capbatch.cli import run

run()

"""Print the first fenced code block under a `## <heading>` of a Markdown file."""

import sys


def first_block(text: str, heading: str) -> str:
    lines = text.splitlines()
    try:
        start = lines.index(f"## {heading}")
    except ValueError:
        sys.exit(f"no '## {heading}' section")
    fence, block = None, []
    for line in lines[start + 1 :]:
        if fence is None:
            if line.startswith("## "):
                break
            if line.startswith("```"):
                fence = "```"
            continue
        if line.startswith(fence):
            return "\n".join(block)
        block.append(line)
    sys.exit(f"no code block under '## {heading}'")


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        print(first_block(handle.read(), sys.argv[2]))

"""Training code for the Show-Attend-Tell model (installed as capbatch.training; needs torch)."""

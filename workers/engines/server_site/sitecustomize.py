"""Imported by every Python process of the vLLM and SGLang servers Parity starts (their PYTHONPATH).

On CPUs with AMX, a process must ask the kernel for permission to use the AMX tiles before
oneDNN runs a bf16 kernel on them, else it dies with "Illegal instruction". The in-process
engine gets it through torch's own start-up path; the server's spawned worker does not, so it
is asked for here, first thing. A no-op on CPUs without AMX (AVX2-only machines).
"""

try:
    import torch

    if hasattr(torch.cpu, "_init_amx"):
        torch.cpu._init_amx()
except Exception:  # noqa: BLE001 - never stop the server from starting
    pass

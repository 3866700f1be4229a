"""Engine adapters: the engines Parity measures (in-process vLLM, a vLLM server, SGLang)."""

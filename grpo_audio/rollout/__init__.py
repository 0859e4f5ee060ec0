"""Rollout engines: vLLM (with audio) and transformers generate behind one interface."""

"""Model adapters behind one protocol: bundled SmolLM2, litellm, echo and scripted fakes."""

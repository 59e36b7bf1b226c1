"""Experimental pieces that are tested but not wired into the trainer yet (per-prompt stage pipelining)."""

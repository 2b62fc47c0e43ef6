"""Devices, the allocator and atomic file writes: plumbing every layer may use."""

"""Helpers shared by the tests: tiny models, the reference packer, the resume harness, a simulated GPU."""

"""Bundled data files (the demo triplets; see ``orchestrator.synth.write_demo_triplets``)."""

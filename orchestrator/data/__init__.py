"""Bundled data files (the demo triplets; see ``orchestrator.search.synth.write_demo_triplets``)."""

"""The core: the label-propagation search (plain functions and dataclasses over arrays) and
the tools that measure it (simulation, calibration, baselines, synthetic data).

- ``search``      Algorithm 1 of the paper as a state machine over a forest (strategies in a registry)
- ``params``      defaults, help text and checks carried by the core dataclasses' fields
- ``paper``       the paper's N_s, K_a, K_iou, K_pa, K_pr, written once
- ``calibration`` K_pr / K_pa from held-out ground truth (paper Sec. 4.3)
- ``baselines``   naive, universal-threshold and LSUN-style baselines
- ``simulate``    strategies run against simulated annotators; ``results`` their runs and curves
- ``plots``       the paper's Fig. 6 and Fig. 8
- ``synth``       synthetic triplets (and the bundled demo data); ``triplets`` their file format and
  COCO matching; ``evaluate`` detector output against ground truth
"""

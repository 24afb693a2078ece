"""Side-by-side speed comparisons of cgdiff against the source recipe's PyTorch implementation.

    python -m benchmarks.run [--quick] [--reps N] [--out benchmarks/results/NAME.json]

torch_models.py / torch_steps.py: the PyTorch comparator (001's networks, train steps and samplers at
cgdiff's sizes and options); run.py: the benchmark command, which runs sections.py's measurements of
sides.py's programs (sizes in settings.py), timed side by side by timing.py.
torch is an optional extra: pip install -e ".[bench]".
"""

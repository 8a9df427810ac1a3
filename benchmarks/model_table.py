"""Parameters and forward FLOPs of every registered model at its native input size.

    python benchmarks/model_table.py            # markdown table on stdout

ImageNet-stem models are profiled on 3x224x224 inputs, the others on 3x32x32. FLOPs are torch's
count (two per multiply-add) of one forward pass; "GMACs" is half of that, the unit ResNet papers
call FLOPs.
"""

from __future__ import annotations

import torch

from cortexnet import create_model, list_models
from cortexnet.analysis.profile import profile_model
from cortexnet.models import model_defaults


def main() -> None:
    torch.set_num_threads(2)
    print("| model | dynamics | parameters | input | GFLOPs | GMACs | NFE |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for name in list_models():
        model = create_model(name)
        size = 224 if model_defaults(name).get("stem") == "imagenet" else 32
        prof = profile_model(model, (3, size, size))
        dyn = sorted(set(getattr(model, "dynamics", ["feedforward"])))
        print(
            f"| {name} | {'/'.join(dyn)} | {prof['params']:,} | 3x{size}x{size} | "
            f"{prof['flops'] / 1e9:.3f} | {prof['macs'] / 1e9:.3f} | "
            f"{prof.get('nfe_forward', '')} |",
            flush=True,
        )
        del model


if __name__ == "__main__":
    main()

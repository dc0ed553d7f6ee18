"""The cost of recomputing batch-norm statistics (model.normalisation: recomputed) against one
training epoch and one prediction pass of the same network on the same training split.

In one run, interleaved rounds, fastest of each:
  recompute  train.normalisation.recompute_statistics over the split: what each evaluation
             (every epoch) and each checkpoint pays once
  predict    one eval-mode prediction pass over the split (train.loop.predict)
  epoch      one training epoch (train.loop.train_epoch: augmented batches, forward, backward, step)
Prints one JSON record: seconds of each, recompute/epoch and recompute/predict, the machine and
the commit.

  python bench/normalisation.py [--model torchvision:resnet18] [--images 300] [--size 32]
                                [--batch 32] [--repeats 3] [--threads 2]

Smallest: --model resnet20 --width 0.125 --images 16 --size 8 --batch 8 --repeats 1
"""

import argparse

import torch
from timing import best_of_interleaved, emit

from jacobian_spectrum.train.loop import TrainSettings, make_optimizer, predict, train_epoch
from jacobian_spectrum.train.models import ModelSpec, build_model
from jacobian_spectrum.train.normalisation import normalisation_layers, recompute_statistics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="torchvision:resnet18")
    ap.add_argument("--width", type=float, default=1.0, help="vgg11_bn's width")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    model = build_model(ModelSpec(a.model, 3, a.size, a.classes, width=a.width), seed=0)
    x = torch.randn(a.images, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.one_hot(torch.arange(a.images) % a.classes, a.classes).float()
    settings = TrainSettings("sgd", 0.001, 1, momentum=0.9, batch_size=a.batch, augment_crop=True)
    opt, _ = make_optimizer(model, settings)
    gen = torch.Generator().manual_seed(0)
    seconds = best_of_interleaved(
        {
            "recompute": lambda: recompute_statistics(model, x),
            "predict": lambda: predict(model, x),
            "epoch": lambda: train_epoch(model, opt, x, y, settings, gen),
        },
        a.repeats,
        device,
    )
    emit(
        "normalisation",
        device,
        {
            "recompute_over_epoch": round(seconds["recompute"] / seconds["epoch"], 3),
            "recompute_over_predict": round(seconds["recompute"] / seconds["predict"], 3),
        },
        model=a.model,
        normalisation_layers=len(normalisation_layers(model)),
        images=a.images,
        size=a.size,
        threads=a.threads,
        seconds={k: round(v, 4) for k, v in seconds.items()},
    )


if __name__ == "__main__":
    main()

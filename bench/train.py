"""Training throughput (images/s) and the data pipeline's share of the time.

One epoch loop as jacobian_spectrum.train.loop runs it (data on the device, batched tensor
augmentation), timed in parts: augmentation (the data pipeline) and forward/backward/step. The
ratios are the pipeline's share of the time and, where CUDA is present, the GPU's images/s over
the CPU's. CPU always, CUDA too where present. Prints one JSON record.

  python bench/train.py [--images 1000] [--size 32] [--channels 3] [--width 1] [--epochs 2]

Smallest: --images 16 --size 8 --width 0.125 --batch-size 8 --epochs 1
"""

import argparse
import time

import torch
from timing import emit

from jacobian_spectrum.common.device import select_device
from jacobian_spectrum.train.loop import augment, least_squares_loss
from jacobian_spectrum.train.models import ModelSpec, build_model


def measure(device, args):
    model = build_model(ModelSpec("resnet20", args.channels, args.size, 3, width=args.width), seed=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.images, args.channels, args.size, args.size, device=device)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (args.images,), device=device), 3).float()
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_data = t_step = 0.0
    for epoch in range(args.epochs + 1):  # epoch 0 warms up
        perm = torch.randperm(args.images, generator=gen, device=device)
        for i in range(0, args.images, args.batch_size):
            idx = perm[i : i + args.batch_size]
            sync()
            t0 = time.perf_counter()
            xb = augment(x[idx], True, True, gen)
            sync()
            t1 = time.perf_counter()
            loss = least_squares_loss(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            t2 = time.perf_counter()
            if epoch:
                t_data += t1 - t0
                t_step += t2 - t1
    total = t_data + t_step
    return {"images_per_s": args.images * args.epochs / total, "data_pipeline_share": t_data / total}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    out = {"cpu": measure(torch.device("cpu"), args)}
    ratios = {"data_pipeline_share_cpu": out["cpu"]["data_pipeline_share"]}
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = select_device("cuda")
        out["cuda"] = measure(device, args)
        ratios["cuda_over_cpu"] = out["cuda"]["images_per_s"] / out["cpu"]["images_per_s"]
        ratios["data_pipeline_share_cuda"] = out["cuda"]["data_pipeline_share"]
    emit("train", device, ratios, **out, images=args.images, size=args.size, width=args.width)


if __name__ == "__main__":
    main()

"""docs/python.md: its example runs, and the library agrees with the definitions it states."""

import re

import numpy as np
import torch
from conftest import ROOT


def example_namespace() -> dict:
    text = (ROOT / "docs/python.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict = {}
    exec(compile(code, "docs/python.md", "exec"), namespace)
    return namespace


def test_the_documented_example_runs_and_its_numbers_hold():
    ns = example_namespace()
    model, x, J, space, streamed = ns["model"], ns["x"], ns["J"], ns["space"], ns["streamed"]
    assert J.shape == (90, sum(p.numel() for p in model.parameters()))
    # J in eval mode: each row is the gradient of one output of one sample, batch-norm fixed
    model.eval()
    for i, k in ((0, 0), (17, 2)):
        model.zero_grad()
        model(x[i : i + 1])[0, k].backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
        assert np.allclose(J[i * 3 + k], grad, rtol=1e-4, atol=1e-6)
    # the spectrum is J's with the batch-norm statistics recomputed on x (J above: the model's
    # own, stored statistics), and the fractions are the projections they name
    from jacobian_spectrum.spaces import information_space, jacobian_matrix
    from jacobian_spectrum.train.normalisation import evaluation_statistics

    with evaluation_statistics(model, x, "recomputed"):
        recomputed = jacobian_matrix(model, x)
    s = np.linalg.svd(recomputed.astype(np.float64), compute_uv=False)
    assert np.allclose(space.singular_values[:90], s, rtol=1e-6, atol=1e-8 * s[0])
    s_stored = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    stored = information_space(model, x, rank=10, normalisation="stored")
    assert np.allclose(stored.singular_values[:90], s_stored, rtol=1e-6, atol=1e-8 * s_stored[0])
    y = ns["label_vector"](ns["labels"], 3)
    info, nuis, _ = space.fractions(y)
    assert np.isclose(info**2 + nuis**2, 1.0) and np.isclose(info, np.linalg.norm(space.project(y)) / np.linalg.norm(y))
    assert np.abs(streamed.singular_values - space.singular_values[:10]).max() <= 1e-6 * space.singular_values[0]

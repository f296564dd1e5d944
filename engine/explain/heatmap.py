"""Class-activation heatmaps per head: Grad-CAM (Captum's LayerGradCam), upsampled to the model's input.

``explain(session, image)`` gives, for each head, where in the image the evidence for its answer lies
(or for a class, label or target the caller names), taken at a spatial layer (default: the last one the
heads read, :func:`engine.explain.layers.default_layer`). The heatmap is float32 in [0, 1], ``size × size``,
pixel for pixel over the model's input after its resize and centre crop (``engine.network.preprocess``);
:meth:`Heatmap.overlay` draws it over that input image. The heads are explained in one batch (one
forward and backward pass for all of them).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.errors import GraftError
from engine.explain.colours import overlay
from engine.explain.layers import check_hookable, grid_probe, resolve_layer
from engine.network.heads import HeadSpec
from engine.network.preprocess import normalise, open_image, resize_and_crop, to_rgb


@dataclass
class Heatmap:
    """Where head ``head`` finds the evidence for ``target`` in one image.

    ``score``: the target's probability (single: softmax, multi: sigmoid) or value (regression);
    ``answer``: the head's own answer in words. ``values``: float32 ``size × size`` in [0, 1] (all 0 when
    nothing at ``layer`` speaks for the target). ``image``: the model's input, RGB ``size × size``.
    ``seconds``: the time the call that made it took (its heads are computed together)."""

    head: str
    kind: str
    target: str
    index: int
    predicted: bool  # the target is the head's own answer
    score: float
    answer: str
    layer: str
    grid: tuple[int, int]
    values: np.ndarray
    image: Image.Image
    seconds: float = 0.0

    @property
    def empty(self) -> bool:
        return not bool(self.values.any())

    def overlay(self, alpha: float = 0.6) -> Image.Image:
        return overlay(self.image, self.values, alpha)

    def describe(self) -> str:
        """``shape: evidence for 'star' (92.4%, its answer) at features (7×7)``."""
        if self.kind == "regression":
            score = f"{self.score:.4g}"
        else:
            score = f"{self.score:.1%}"
        which = "its answer" if self.predicted else f"it answers {self.answer}"
        text = f"{self.head}: evidence for {self.target!r} ({score}, {which}) at {self.layer} ({self.grid[0]}×{self.grid[1]})"
        return text + ("; nothing there speaks for it" if self.empty else "")


def model_input(session: Any, image: str | os.PathLike | Image.Image) -> tuple[Image.Image, torch.Tensor]:
    """The model's view of ``image`` (RGB after resize and crop) and its normalised 1×3×S×S tensor."""
    spec = session.input_spec
    decoded = open_image(image) if isinstance(image, (str, os.PathLike)) else image
    view = resize_and_crop(to_rgb(decoded, spec.alpha_background), spec)
    return view, torch.from_numpy(normalise(view, spec)).unsqueeze(0)


def target_index(spec: HeadSpec, target: str | int | None, values: np.ndarray) -> tuple[int, bool]:
    """The output to explain: ``target`` by name (or number), else the head's answer (single: the top
    class; multi: the most probable label; regression: the first target). Returns it and whether it is
    the answer."""
    names = spec.label_names
    answer = int(np.argmax(values)) if spec.kind != "regression" else 0
    if target is None or target == "":
        return answer, True
    if isinstance(target, str) and target in names:
        index = names.index(target)
    elif isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        index = int(target)
        if not 0 <= index < spec.outputs:
            raise GraftError(f"Head {spec.name!r} has no output {index} (it has {spec.outputs}).")
    else:
        what, many = {"single": ("class", "classes"), "multi": ("label", "labels"),
                      "regression": ("target", "targets")}[spec.kind]
        raise GraftError(f"Head {spec.name!r} has no {what} {target!r} (its {many}: {', '.join(names[:12])}"
                         f"{' …' if len(names) > 12 else ''}).")
    return index, index == answer


def _answer(spec: HeadSpec, values: np.ndarray) -> str:
    names = spec.label_names
    if spec.kind == "single":
        i = int(np.argmax(values))
        return f"{names[i]} {values[i]:.1%}"
    if spec.kind == "multi":
        on = [f"{n} {v:.1%}" for n, v in zip(names, values) if v >= 0.5]
        return ", ".join(on) if on else "no label"
    return ", ".join(f"{n} {v:.4g}" for n, v in zip(names, values))


def _scores(spec: HeadSpec, raw: torch.Tensor) -> np.ndarray:
    out = raw.detach().float()[0]
    if spec.kind == "single":
        out = torch.softmax(out, dim=0)
    elif spec.kind == "multi":
        out = torch.sigmoid(out)
    return out.cpu().numpy()


def explain(session: Any, image: str | os.PathLike | Image.Image, heads: Sequence[str] | None = None,
            target: str | int | Mapping[str, str | int | None] | None = None,
            layer: str | None = None) -> list[Heatmap]:
    """A Grad-CAM heatmap per head (``heads``: names, default every head) for ``target`` (a class, label
    or target name for every head, or ``{head: name}``; default: each head's own answer), taken at
    ``layer`` (a module path of the network; default: the last spatial layer the heads read).

    GraftError for an unreadable image, a model without heads, a TorchScript network, an unknown head,
    class or layer, or a layer without a spatial output. The model is hooked while this runs: run no
    other forward pass of it at the same time (the window's workers take turns)."""
    from captum.attr import LayerAttribution, LayerGradCam

    start = time.perf_counter()
    body = check_hookable(session)
    model = session.model
    specs = {s.name: s for s in session.heads}
    if not specs:
        raise GraftError("The model has no heads yet: add (and train) a head to see what it looks at.")
    chosen = list(specs) if heads is None else list(heads)
    unknown = [h for h in chosen if h not in specs]
    if unknown:
        raise GraftError(f"The model has no head {unknown[0]!r} (its heads: {', '.join(specs)}).")
    if not chosen:
        raise GraftError("No head to explain.")
    view, x = model_input(session, image)
    path, form = resolve_layer(session, layer)
    device = next(iter(model.parameters()), torch.zeros(())).device
    x = x.to(device)
    wanted = {h: (target.get(h) if isinstance(target, Mapping) else target) for h in chosen}
    fixed = {h: target_index(specs[h], wanted[h], np.zeros(specs[h].outputs))[0]
             for h in chosen if wanted[h] not in (None, "")}
    seen: dict[str, torch.Tensor] = {}

    def forward(batch: torch.Tensor) -> torch.Tensor:
        """Row i: head i's explained output, its largest (its answer: the top class, the most probable
        label; a regression head's first target) unless one was named. One pass for every head."""
        out = model(batch)
        seen.update({h: out[h][:1].detach() for h in chosen})
        columns = []
        for h in chosen:
            values = out[h].float().reshape(batch.shape[0], -1)
            if h in fixed:
                columns.append(values[:, fixed[h]])
            elif specs[h].kind == "regression":
                columns.append(values[:, 0])
            else:
                columns.append(values.max(dim=1).values)
        return torch.stack(columns, dim=1)

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), grid_probe(body, path, form) as probe:
            cams = LayerGradCam(forward, probe).attribute(x.repeat(len(chosen), 1, 1, 1),
                                                          target=list(range(len(chosen))), relu_attributions=True)
        size = session.input_spec.size
        maps = LayerAttribution.interpolate(cams.detach().float(), (size, size), "bilinear")[:, 0]
    finally:
        model.train(was_training)
    scores = {h: _scores(specs[h], seen[h]) for h in chosen}
    picks = {h: target_index(specs[h], wanted[h], scores[h]) for h in chosen}
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    maps = torch.where(peak > 1e-12, maps.clamp(min=0) / peak, torch.zeros_like(maps)).clamp(0, 1)
    seconds = time.perf_counter() - start
    result = []
    for i, h in enumerate(chosen):
        spec, (index, predicted) = specs[h], picks[h]
        result.append(Heatmap(h, spec.kind, spec.label_names[index], index, predicted, float(scores[h][index]),
                              _answer(spec, scores[h]), path, (form.height, form.width),
                              maps[i].cpu().numpy().astype(np.float32), view, seconds))
    return result


def save_heatmaps(heatmaps: Sequence[Heatmap], image: str | os.PathLike, out: Path) -> list[Path]:
    """``out/<image stem>.<head>.png`` (the overlay) and ``.npy`` (the heatmap) per heatmap; the paths written."""
    from engine.files import atomic_write

    written = []
    stem = Path(image).stem
    for hm in heatmaps:
        png, npy = out / f"{stem}.{hm.head}.png", out / f"{stem}.{hm.head}.npy"
        picture = hm.overlay()
        atomic_write(png, lambda tmp, pic=picture: pic.save(tmp, "PNG"))
        atomic_write(npy, lambda tmp, v=hm.values: _save_npy(tmp, v))
        written += [png, npy]
    return written


def _save_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, values.astype(np.float32))

"""The field's model zoos by name (``model.name: torchvision:<name>`` or ``timm:<name>``) and a
researcher's own factory (``package.module:factory``), each called with only the arguments it
accepts: the number of classes, and the data's channels and image size under the names that
library uses. Nothing is downloaded: zoo networks are built with random weights
(``weights=None``, ``pretrained=False``); pretrained ones come from ``model.weights``, a local
file (:func:`..models.load_weights`).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping

from torch import nn

from ..common.plugins import import_object

ZOOS = ("torchvision", "timm")
# the data's shape under each library's own argument names; torchvision's constructors take
# no channel argument (its networks read 3-channel images)
ARGUMENT_NAMES = {
    "torchvision": {"num_classes": "num_classes", "image_size": "image_size"},
    "timm": {"num_classes": "num_classes", "in_channels": "in_chans", "image_size": "img_size"},
    "factory": {"num_classes": "num_classes", "in_channels": "in_channels", "image_size": "image_size"},
}
# keyword arguments that would download weights: refused, model.weights loads a local file
DOWNLOADING = {
    "torchvision": ("weights", "progress"),
    "timm": ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay"),
}
ZOO_INSTALL = {"timm": "timm is an optional extra: pip install -e '.[zoo]' (or pip install timm)"}


def zoo_of(name: str) -> str | None:
    """``torchvision`` or ``timm`` for a zoo name ``torchvision:<name>`` / ``timm:<name>``, else None."""
    library, sep, _ = name.partition(":")
    return library if sep and library in ZOOS else None


def keyword_names(*functions: Callable) -> tuple[set[str], bool]:
    """The keyword arguments the functions name, and whether the last takes any (``**kwargs``)."""
    names, open_ended = set(), False
    for fn in functions:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: assume it takes anything
            return names, True
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        open_ended = any(p.kind == p.VAR_KEYWORD for p in params)
    return names - {"self"}, open_ended


def _returned_class(builder: Callable) -> type | None:
    """The network class a zoo builder is annotated to return (torchvision's and timm's are),
    whose constructor receives the builder's ``**kwargs``."""
    try:
        returned = typing.get_type_hints(builder).get("return")
    except Exception:  # unresolvable annotations: fall back to the builder's own arguments
        return None
    return returned if isinstance(returned, type) and issubclass(returned, nn.Module) else None


def _unknown(library: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(f'{library}:{c}' for c in close)}?" if close else ""
    return ValueError(f"config key 'model.name': {library} has no model {name!r}{hint}")


def _zoo_builder(library: str, name: str) -> tuple[Callable, Callable, set[str]]:
    """(the callable that builds the network, the builder whose signature tells its arguments,
    the argument names it accepts)."""
    if library == "torchvision":
        import torchvision.models

        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise _unknown(library, name, torchvision.models.list_models()) from None

        def build(**kw: object) -> nn.Module:
            return builder(weights=None, **kw)

    else:
        try:
            import timm
        except ImportError:
            raise ValueError(f"config key 'model.name': timm:{name} needs timm; {ZOO_INSTALL['timm']}") from None
        if not timm.is_model(name):
            raise _unknown(library, name, timm.list_models())
        builder = timm.models.model_entrypoint(name)

        def build(**kw: object) -> nn.Module:
            return timm.create_model(name, pretrained=False, **kw)

    cls = _returned_class(builder)
    accepted, _ = keyword_names(builder, cls.__init__) if cls is not None else keyword_names(builder)
    if library == "timm":  # create_model passes these to every timm network
        accepted |= {"num_classes", "in_chans"}
    return build, builder, accepted


def check_model_name(name: str) -> None:
    """Before the data's shape is known: the zoo has the model and its library is installed, or
    the factory imports; ValueError naming model.name."""
    library = zoo_of(name)
    if library is None:
        import_object(name, "model.name")
    else:
        _zoo_builder(library, name.partition(":")[2])


def zoo_arguments(library: str, data: Mapping[str, int], accepted: set[str], open_ended: bool) -> dict:
    """The data's shape under ``library``'s names, only those its constructor accepts."""
    names = ARGUMENT_NAMES[library]
    return {names[k]: v for k, v in data.items() if k in names and (open_ended or names[k] in accepted)}


def build_named_model(
    name: str, in_channels: int, image_size: int, num_classes: int, kwargs: Mapping | None = None
) -> nn.Module:
    """The network named ``name`` (a zoo name or ``package.module:factory``) for images of
    ``in_channels`` x ``image_size`` x ``image_size`` and ``num_classes`` outputs;
    ``kwargs`` (model.kwargs) go to its constructor and override the data's values.
    ValueError naming model.name for an unknown name, a missing library, a downloading
    argument, or images the network cannot take."""
    kwargs = dict(kwargs or {})
    data = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    library = zoo_of(name)
    if library is None:
        factory = import_object(name, "model.name")
        accepted, open_ended = keyword_names(factory)
        args = zoo_arguments("factory", data, accepted, open_ended)
        build = factory
    else:
        refused = [k for k in DOWNLOADING[library] if k in kwargs]
        if refused:
            raise ValueError(
                f"config key 'model.kwargs': {refused[0]!r} would download weights, and nothing is downloaded; "
                "set model.weights to a local state-dict file (torch or safetensors) instead"
            )
        build, _, accepted = _zoo_builder(library, name.partition(":")[2])
        args = zoo_arguments(library, data, accepted, open_ended=False)
        if "in_channels" not in ARGUMENT_NAMES[library] and in_channels != 3:
            raise ValueError(
                f"config key 'model.name': {name} reads 3-channel images (torchvision's constructors take no "
                f"channel argument), but the data's images have {in_channels}; use a data set of colour images, "
                f"timm:<name> (in_chans), or your own factory package.module:factory"
            )
    args.update(kwargs)
    try:
        return build(**args)
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ValueError(f"config key 'model.name': {name}({shown}) failed: {type(exc).__name__}: {exc}") from exc

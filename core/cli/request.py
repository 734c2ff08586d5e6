"""The request's fields as command-line options, derived from the request model itself: ``generate``
builds a ``GenerationRequest`` from them and ``submit`` sends them as a ``JobRequest`` body, so a field
added to the contract is an option of both without another list of names."""

from __future__ import annotations

import argparse
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from core.contract.frontier import Target
from core.contract.strategies import AUTO, STRATEGIES, parse_param

# Options the command line has always spelled differently from the field.
OPTION_NAMES = {"num_inference_steps": "--steps"}
# Fields that are not a single scalar option: the cache (three options, and one per field of an `auto` target),
# the LoRA adapters (repeated) and lists.
_CACHE = "cache"
_LORAS = "loras"
NO_CACHE = "none"


def add_request_options(
    parser: argparse.ArgumentParser, request: type[BaseModel], skip: tuple[str, ...] = (), targets: bool = False
) -> None:
    """One option per scalar field of ``request`` (unset: the model's default), plus the cache options; with
    ``targets``, one per field of an `auto` job's target too (the service resolves those at submit)."""
    for name, field in request.model_fields.items():
        if name in skip:
            continue
        if name == _CACHE:
            parser.add_argument(
                "--cache",
                metavar="STRATEGY",
                help=", ".join(STRATEGIES) + (f"; or {AUTO} (the default with a target option)" if targets else ""),
            )
            parser.add_argument(
                "--cache-param", action="append", default=[], metavar="NAME=VALUE", help="a strategy parameter"
            )
            parser.add_argument("--profile", help="calibration profile (default: the nearest for the model and shape)")
            if targets:
                _add_target_options(parser)
            continue
        if name == _LORAS:
            add_lora_option(parser)
            continue
        kind = _scalar(field.annotation)
        if kind is None:
            continue
        option = OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
        help_text = field.description
        if kind is bool:
            parser.add_argument(option, dest=name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(option, dest=name, type=kind, required=field.is_required(), help=help_text)


def request_fields(args: argparse.Namespace, request: type[BaseModel]) -> dict[str, Any]:
    """The fields the command line set, as the request model names them."""
    fields = {name: getattr(args, name) for name in request.model_fields if getattr(args, name, None) is not None}
    if _CACHE in request.model_fields and hasattr(args, "cache"):
        target = {name: getattr(args, name) for name in Target.model_fields if getattr(args, name, None) is not None}
        strategy = args.cache or (AUTO if target else NO_CACHE)
        cache: dict[str, Any] = {"strategy": strategy, "params": dict(parse_param(p) for p in args.cache_param)}
        if args.profile is not None:
            cache["profile"] = args.profile
        if target:
            cache["target"] = target
        fields[_CACHE] = cache
    if _LORAS in request.model_fields and getattr(args, "lora", None):
        fields[_LORAS] = parse_loras(args.lora)
    return fields


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    """One option per field of an `auto` job's target (``--tier``, ``--min-psnr``, ...): the cache becomes `auto`."""
    for name, field in Target.model_fields.items():
        option = "--" + name.replace("_", "-")
        help_text = f"{AUTO} target: {field.description}"
        choices = [value for arg in get_args(field.annotation) for value in get_args(arg)]
        if choices:
            parser.add_argument(option, dest=name, choices=choices, help=help_text)
        else:
            parser.add_argument(option, dest=name, type=_scalar(field.annotation), help=help_text)


def add_lora_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora",
        action="append",
        metavar="NAME[:WEIGHT]",
        help="a LoRA adapter registered for the model, and its weight (default 1); repeatable",
    )


def parse_loras(items: list[str] | None) -> list[dict[str, Any]]:
    """``NAME[:WEIGHT]`` as --lora gives them."""
    loras = []
    for item in items or ():
        name, _, weight = item.partition(":")
        try:
            loras.append({"name": name.strip(), "weight": float(weight) if weight.strip() else 1.0})
        except ValueError:
            raise argparse.ArgumentTypeError(f"--lora {item}: the weight must be a number") from None
    return loras


def _scalar(annotation: Any) -> type | None:
    """int, float, str or bool for ``T`` and ``T | None``; None for anything else."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        annotation = members[0] if len(members) == 1 else None
    return annotation if annotation in (int, float, str, bool) else None

"""The `clipops` command: search the embedding store, list registered models, show lineage.

    clipops search "a red circle" --k 5 [--image PATH] [--model NAME]
                   [--version N | --alias production] [--modality image|text]
    clipops models [--model NAME]
    clipops lineage VERSION [--model NAME]

Every subcommand takes `--root` (the project root, default `.`) and `--params` (default
`<root>/params.yaml`, or the built-in defaults when there is none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from storage.registry import Lineage, ModelRecord, Registry, RegistryError
from tasks.errors import StageError
from tasks.params import ParamsError, PipelineParams, load_params

KEY_METRICS = (
    "zeroshot_acc1",
    "zeroshot_acc5",
    "image_retrieval_recall@1",
    "text_retrieval_recall@1",
)


class CliError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


def _params(args: argparse.Namespace) -> PipelineParams:
    if args.params is not None:
        return load_params(args.params)
    default = Path(args.root) / "params.yaml"
    return load_params(default) if default.exists() else PipelineParams()


def _registry(params: PipelineParams, root: str) -> Registry:
    try:
        registry = Registry.from_params(params.storage, root, create=False)
    except RegistryError as exc:
        raise CliError(str(exc)) from None
    if not registry.model_names():
        raise CliError(
            f"no models registered yet in {registry.url}: run the pipeline "
            "(`dvc repro` or `python -m tasks.register`)"
        )
    return registry


def resolve_record(
    registry: Registry, name: str, version: int | None, alias: str | None
) -> tuple[ModelRecord, str]:
    """The version to use and how it was chosen (explicit version, alias, or latest)."""
    if version is not None:
        return registry.get_model(name, version), f"version {version}"
    if alias is not None:
        record = registry.get_alias(name, alias)
        if record is None:
            set_aliases = registry.aliases(name) or "none"
            raise CliError(f"model {name!r} has no alias {alias!r} (aliases: {set_aliases})")
        return record, f"alias {alias}"
    record = registry.get_alias(name, "production")
    if record is not None:
        return record, "alias production"
    return registry.get_model(name), "latest version (no production alias yet)"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _label(value: object) -> str:
    """Rows without a class (generated scenes, user pairs) show an empty label, not 'nan'."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _short(text: Any, width: int = 60) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_search(args: argparse.Namespace) -> str:
    """Encode the query with the registered model and print the nearest stored rows."""
    if (args.query is None) == (args.image is None):
        raise CliError("give either a text query or --image PATH (not both, not neither)")
    params = _params(args)
    name = args.model or params.register.model_name
    registry = _registry(params, args.root)
    record, how = resolve_record(registry, name, args.version, args.alias)

    from storage.artifacts import ArtifactStore
    from storage.embeddings import EmbeddingStore
    from tasks.device import pick_device
    from tasks.models import encode_images, encode_texts
    from tasks.register import load_registered_model

    store = EmbeddingStore.from_params(params.storage, args.root)
    if store.count(model_name=name, model_version=record.version) == 0:
        raise CliError(
            f"{name} v{record.version} has no embeddings in {store.uri} "
            f"(stored versions: {store.versions(name) or 'none'}); pick another --version"
        )
    artifacts = ArtifactStore.from_params(params.storage, args.root)
    loaded = load_registered_model(record, artifacts, pick_device(params.device))
    if args.image is not None:
        image = Path(args.image)
        if not image.is_file():
            raise CliError(f"--image {image}: no such file")
        query = encode_images(loaded, [image.read_bytes()])[0]
        shown = f"image {image}"
    else:
        query = encode_texts(loaded, [args.query])[0]
        shown = repr(args.query)
    hits = store.search(query, args.k, name, record.version, args.modality)
    rows = [
        [str(h.rank), f"{h.distance:.4f}", str(h.source_id), _short(h.caption), _label(h.label)]
        for h in hits.itertuples()
    ]
    head = (
        f"{shown} -> {args.modality} embeddings of {name} v{record.version} ({how}), "
        f"top {len(rows)} by cosine distance"
    )
    return head + "\n" + _table(rows, ["rank", "distance", "source id", "caption", "label"])


def cmd_models(args: argparse.Namespace) -> str:
    """Every registered version with stage, aliases, weights and key metrics."""
    params = _params(args)
    registry = _registry(params, args.root)
    records = registry.list_models(args.model)
    if not records:
        raise CliError(f"no versions of {args.model!r}; registered: {registry.model_names()}")
    keys = [k for k in KEY_METRICS if any(k in r.metrics for r in records)]
    rows = [
        [
            r.name,
            str(r.version),
            r.stage,
            ",".join(r.aliases),
            r.weights_sha256[:12],
            str(r.parent_version or ""),
            r.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        + [f"{r.metrics[k]:.4f}" if k in r.metrics else "" for k in keys]
        for r in records
    ]
    header = ["model", "version", "stage", "aliases", "weights", "parent", "created (UTC)"]
    return _table(rows, header + keys)


def _lineage_lines(node: Lineage, depth: int = 0) -> list[str]:
    pad = "  " * depth
    m = node.model
    acc = m.metrics.get("zeroshot_acc1")
    extra = f", zeroshot_acc1 {acc:.4f}" if acc is not None else ""
    lines = [
        f"{pad}{m.name} v{m.version} [{m.stage}] weights {m.weights_sha256[:12]}"
        f"{', aliases ' + ','.join(m.aliases) if m.aliases else ''}{extra}, "
        f"code {str(m.code_version or 'unknown')[:12]}"
    ]
    for relation, ds in node.datasets:
        lines.append(
            f"{pad}  {relation}: dataset {ds.name} {ds.content_hash[:12]} ({ds.num_rows} rows, "
            f"{ds.path})"
        )
    if not node.parents and m.parent_sha256:
        lines.append(f"{pad}  derived_from: unregistered weights {m.parent_sha256[:12]}")
    for relation, parent in node.parents:
        lines.append(f"{pad}  {relation}:")
        lines += _lineage_lines(parent, depth + 2)
    return lines


def cmd_lineage(args: argparse.Namespace) -> str:
    """The lineage tree of one version: datasets and parent models, recursively."""
    params = _params(args)
    registry = _registry(params, args.root)
    name = args.model or params.register.model_name
    return "\n".join(_lineage_lines(registry.lineage(args.version, name)))


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `clipops` (exposed for tests and docs)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=".", help="project root (stores live under it)")
    common.add_argument("--params", default=None, help="params file (default: ROOT/params.yaml)")
    common.add_argument("--model", default=None, help="model name (default: register.model_name)")
    parser = argparse.ArgumentParser(prog="clipops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", parents=[common], help="nearest stored rows to a query")
    search.add_argument("query", nargs="?", help="text query")
    search.add_argument("--image", default=None, help="image file to use as the query")
    search.add_argument("--k", type=int, default=10, help="number of results")
    which = search.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, help="registered version")
    which.add_argument("--alias", default=None, help="alias, e.g. production")
    search.add_argument("--modality", choices=("image", "text"), default="image",
                        help="which stored embeddings to search (default: image)")  # fmt: skip
    search.set_defaults(func=cmd_search)

    models = sub.add_parser("models", parents=[common], help="registered versions and metrics")
    models.set_defaults(func=cmd_models)

    lineage = sub.add_parser("lineage", parents=[common], help="datasets and parents of a version")
    lineage.add_argument("version", type=int, help="registered version")
    lineage.set_defaults(func=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `clipops` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "k", 1) < 1:
        print("clipops: --k must be >= 1", file=sys.stderr)
        return 2
    try:
        print(args.func(args))
    except ParamsError as exc:
        print(f"clipops: {exc}", file=sys.stderr)
        return 2
    except (CliError, RegistryError, StageError, FileNotFoundError, ValueError) as exc:
        print(f"clipops {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

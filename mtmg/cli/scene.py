"""``mtmg map`` and ``mtmg search``: zero-shot map of a Sentinel-2 scene and free-text search over its windows."""
from __future__ import annotations

import argparse
from pathlib import Path

SCENE_HELP = ("a folder of Sentinel-2 band files (B01 ... B12, B8A; .tif or .jp2; an L2A product's R10m/R20m/R60m), "
              "a .SAFE folder, or one multi-band GeoTIFF")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("scene", type=Path, help=SCENE_HELP)
    p.add_argument("--profile", default="default", help="profile name under configs/ or a profile folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument("--stride", type=int, help="pixels between windows (default: the window size, no overlap)")
    p.add_argument("--level", choices=("L1C", "L2A"), help="product level (default: from the product's names or "
                                                          "metadata, else L1C when B10 is present)")
    p.add_argument("--bands", help="band order of a multi-band GeoTIFF without band descriptions, e.g. "
                                   "B02,B03,B04,B08,...")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "map", help="zero-shot map of a Sentinel-2 scene (GeoTIFF, CSV, GeoJSON)",
        description="Classify every window of a Sentinel-2 scene zero-shot with the profile's MS student and its "
                    "patched and zero-shot CLIP (on the RGB composite), with the profile's task classes or your "
                    "own. Writes <encoder>_classes.tif (one pixel per window), <encoder>_probs.tif, windows.csv "
                    "and windows.geojson. Runs stages 1 and 2 of the profile first when they have not run.")
    _common(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--classes", help="comma-separated class names, used with the task's prompt templates")
    group.add_argument("--prompts", type=Path, help="text file of free-text prompts, one class a line")
    p.add_argument("--encoder", choices=("student", "patched", "zeroshot", "all"), default="all")
    p.set_defaults(func=run_map)

    s = subparsers.add_parser(
        "search", help="find the windows of a Sentinel-2 scene that match a text",
        description="Rank the windows of a scene by the cosine similarity of their embedding to the text "
                    "embedding of QUERY, or to the embedding of one window (--like ROW,COL, also across RGB and "
                    "MS with --like-encoder); writes the top K as <query>.geojson and PNG thumbnails.")
    _common(s)
    s.add_argument("query", nargs="?", help="free text, e.g. 'a tidal salt marsh'")
    s.add_argument("--like", metavar="ROW,COL", help="search by example: the window at this row and column of the "
                                                     "window grid (as in windows.csv) instead of a text")
    s.add_argument("--like-encoder", choices=("student", "patched", "zeroshot"),
                   help="the encoder that embeds the example window (default: --encoder); another one searches "
                        "across modalities, e.g. an RGB window against MS windows")
    s.add_argument("--k", type=int, default=10, help="how many windows to keep (default 10)")
    s.add_argument("--encoder", choices=("student", "patched", "zeroshot"), default="student")
    s.set_defaults(func=run_search)


def _checked(args: argparse.Namespace) -> tuple:
    """Everything that can be refused before a model is loaded: the arguments, the output folder, the scene."""
    from mtmg.cli.checks import require_writable_folder  # imported on use: the command line starts fast
    from mtmg.core.errors import ArgumentError
    from mtmg.data.scene import open_scene, window_grid
    from mtmg.mapping.encoders import window_size
    from mtmg.runs.profiles import load_profile

    if args.stride is not None and args.stride < 1:
        raise ArgumentError(f"--stride must be at least 1 pixel, got {args.stride}")
    bands = [b for b in args.bands.split(",") if b.strip()] if args.bands else None
    prof = load_profile(args.profile, device=args.device)
    require_writable_folder(args.out, "--out")
    with open_scene(args.scene, level=args.level, bands=bands) as scene:
        window_grid(scene, window_size(prof), args.stride)
    return prof, bands


def run_map(args: argparse.Namespace) -> int:
    from mtmg.book.figures import class_colour  # imported on use: the command line starts fast
    from mtmg.core.errors import ArgumentError
    from mtmg.mapping import outputs, scenemap
    from mtmg.mapping.encoders import ENCODERS, Prompts, from_profile, task_prompts

    prompts = None
    if args.classes is not None:
        names = [c for c in args.classes.split(",") if c.strip()]
        if not names:
            raise ArgumentError("--classes: the class list is empty; give comma-separated names, e.g. "
                                "'forest,water,town'")
    elif args.prompts is not None:
        prompts = Prompts.from_file(args.prompts)
    prof, bands = _checked(args)
    if args.classes is not None:
        prompts = task_prompts(prof.patch.task).with_classes(names)
    encoders = from_profile(prof, ENCODERS if args.encoder == "all" else (args.encoder,), prompts)
    emb = scenemap.classify(scenemap.embed_scene(args.scene, encoders, stride=args.stride, level=args.level,
                                                 bands=bands), encoders)
    for path in outputs.write_map(emb, args.out, class_colour):
        print(f"wrote {path}")
    n, kept = len(emb.windows), len(emb.kept)
    print(f"{kept} of {n} windows mapped ({n - kept} mostly nodata, skipped); level {emb.level} "
          f"({emb.level_source}); window {emb.window} px, stride {emb.stride} px")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in emb.seconds.items()))
    return 0


def run_search(args: argparse.Namespace) -> int:
    from mtmg.core.errors import ArgumentError  # imported on use: the command line starts fast
    from mtmg.mapping import outputs, scenemap
    from mtmg.mapping.encoders import from_profile

    if args.k < 1:
        raise ArgumentError(f"--k must be at least 1, got {args.k}")
    if (args.query is None) == (args.like is None):
        raise ArgumentError("give either a QUERY text or --like ROW,COL (one of them)")
    if args.query is not None and not args.query.strip():
        raise ArgumentError("the query is empty; give a text such as 'a tidal salt marsh'")
    like = None
    if args.like is not None:
        parts = args.like.split(",")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ArgumentError(f"--like {args.like!r}: expected ROW,COL of the window grid, e.g. 3,12")
        like = tuple(int(p) for p in parts)
    source = args.like_encoder or args.encoder
    prof, bands = _checked(args)
    encoders = from_profile(prof, tuple(dict.fromkeys((args.encoder, source))))
    emb = scenemap.embed_scene(args.scene, encoders, stride=args.stride, level=args.level, bands=bands)
    if like is None:
        top, name = scenemap.search_text(emb, encoders, args.query, encoder=args.encoder, k=args.k), args.query
    else:
        top = scenemap.search_example(emb, *like, source=source, target=args.encoder, k=args.k)
        name = f"like {source} r{like[0]} c{like[1]} in {args.encoder}"
    for path in outputs.write_search(emb, top, args.out, outputs.slug(name)):
        print(f"wrote {path}")
    print(top[["rank", "score", "row", "col", "lon", "lat"]].to_string(index=False))
    return 0

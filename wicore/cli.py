"""`wicore` command line: manage bundled models, generate text, and serve the OpenAI-compatible API.

Each subcommand imports the engine or server it needs when it runs, so `wicore models ...` starts
without loading pydantic, FastAPI or the Mojo kernels (no import cycle is involved).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from wicore.models import registry

if TYPE_CHECKING:
    from wicore.config import Settings


def _models(args: argparse.Namespace) -> int:
    if args.action == "pull":
        from wicore.progress import DownloadBar

        for name in args.names or [registry.DEFAULT_MODEL]:
            with DownloadBar(name) as bar:
                registry.pull(name, force=args.force, progress=bar)
    else:
        for row in registry.list_models():
            state = "ready" if row["present"] else "not pulled"
            print(f"{row['name']:<32} {state:<11} {int(row['size']) / 1e6:8.1f} MB  {row['path']}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from wicore.config import LoggingSettings
    from wicore.engine.llm import LLM, Timings
    from wicore.engine.sampling import SamplingParams
    from wicore.logging import setup_logging

    setup_logging(LoggingSettings())  # a first run's kernel build and model preparation say so on stderr

    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
    )
    llm = LLM(args.model, max_model_len=args.ctx)
    prompt: str | list[int] = args.prompt
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        prompt = llm.encode_chat(messages)
    timings = Timings()
    for piece in llm.stream(prompt, params, timings):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        print(
            f"prompt: {timings.prompt_tokens} tokens, {timings.prompt_tps:.1f} tokens/s | "
            f"decode: {timings.decode_tokens} tokens, {timings.decode_tps:.1f} tokens/s",
            file=sys.stderr,
        )
    return 0


def _settings(args: argparse.Namespace, flags: dict[str, tuple[str, str]]) -> Settings:
    """Settings from --config and the environment, with each flag given (name: (section, key)) on top."""
    from wicore.config import load

    overrides: dict[str, dict[str, object]] = {}
    for flag, (section, key) in flags.items():
        if getattr(args, flag) is not None:
            overrides.setdefault(section, {})[key] = getattr(args, flag)
    return load(args.config, overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from wicore.logging import setup_logging
    from wicore.server.app import create_app

    settings = _settings(args, {"host": ("api", "host"), "port": ("api", "port"), "model": ("model", "name")})
    for model in (settings.model.name, *settings.model.preload):
        registry.resolve(model)  # a start-up model that is missing stops here, with the command that fixes it
    setup_logging(settings.logging)
    app = create_app(settings)
    # Our JSON logging replaces uvicorn's config and its access log (RequestContextMiddleware logs requests).
    uvicorn.run(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        log_level=settings.logging.level.lower(),
        access_log=False,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default: a spoofed header from any local
        # client would then pass for another address, past the per-IP rate limit.
        proxy_headers=bool(settings.api.forwarded_allow_ips),
        forwarded_allow_ips=settings.api.forwarded_allow_ips or None,
    )
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from wicore import cluster
    from wicore.logging import setup_logging

    # --model is not a setting here: it goes to each replica's command line.
    settings = _settings(args, {"host": ("api", "host"), "port": ("api", "port"),
                                "replicas": ("cluster", "replicas"), "policy": ("cluster", "policy")})  # fmt: skip
    setup_logging(settings.logging)
    try:
        return cluster.run(cluster.ClusterSpec(settings, config=args.config, model=args.model))
    except cluster.ClusterError as e:
        print(f"wicore: error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wicore", description="WiCore: local LLM inference on Mojo kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list or download the bundled models")
    models.add_argument("action", choices=["list", "pull"])
    models.add_argument("names", nargs="*", help="models to pull (default: the default model)")
    models.add_argument("--force", action="store_true", help="download again even if present")
    models.set_defaults(func=_models)

    gen = sub.add_parser("generate", help="generate text from a prompt, streamed as it is produced")
    gen.add_argument("prompt")
    gen.add_argument("--model", default=registry.DEFAULT_MODEL, help="bundled model name or GGUF path")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", default=None, help="system message (with --chat)")
    gen.add_argument("--max-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--frequency-penalty", type=float, default=0.0)
    gen.add_argument("--presence-penalty", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--ctx", type=int, default=4096, help="context length")
    gen.add_argument("--stats", action="store_true", help="print prompt and decode tokens/s")
    gen.set_defaults(func=_generate)

    serve = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
    serve.add_argument("--host", default=None, help="address to bind (default: api.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: api.port, 8000)")
    serve.add_argument(
        "--model", default=None,
        help="the default model, loaded at start-up: bundled name or GGUF path (default: model.name); every other "
        "downloaded model loads when a request names it",
    )  # fmt: skip
    serve.add_argument("--config", default=None, help="JSON settings file (see configs/default.json)")
    serve.set_defaults(func=_serve)

    clus = sub.add_parser("cluster", help="serve N replicas behind SGLang's Model Gateway on this machine")
    clus.add_argument("--replicas", type=int, default=None, help="replicas to start (default: cluster.replicas, 2)")
    clus.add_argument("--host", default=None, help="address the gateway binds (default: api.host, 127.0.0.1)")
    clus.add_argument("--port", type=int, default=None, help="gateway port; replica i gets port+1+i (default 8000)")
    clus.add_argument("--policy", default=None, help="gateway routing (default: cluster.policy, cache_aware)")
    clus.add_argument("--model", default=None, help="bundled model name or GGUF path (default: model.name)")
    clus.add_argument("--config", default=None, help="JSON settings file, read by the replicas too")
    clus.set_defaults(func=_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (registry.ModelError, ValueError) as e:
        print(f"wicore: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The app factory: settings in, a ready FastAPI app out. Everything is resolved here, once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from openexec import __version__
from openexec.api import docs, ledger, middleware, problems, routes
from openexec.engine import Engine, ExecutionEvent, rfc3339, utc_now
from openexec.ledger.service import open_ledger
from openexec.logs import configure_logging, log_execution
from openexec.metrics import ServiceMetrics, install_metrics_route
from openexec.plugins import InProcessPlugin, PluginError, load_registry
from openexec.receipts import load_receipt_signer
from openexec.settings import Settings
from openexec.store import Store

log = logging.getLogger("openexec")

# FastAPI's native OpenTelemetry (0.16x) would report to whatever provider the process
# configures; the service makes no outbound calls, and the check alone costs every request.
NO_TELEMETRY: dict[str, bool] = {"tracing": False, "metrics": False, "logs": False}


def create_app(
    settings: Settings | None = None, plugins: Iterable[InProcessPlugin] | None = None
) -> FastAPI:
    """Build the service. ``plugins`` registers plugins in-process instead of entry points.

    Raises ``ConfigError`` or ``PluginError`` with one clear message when startup must stop.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings.log_format)
    registry = load_registry(settings, plugins)
    metrics = ServiceMetrics(registry) if settings.metrics else None
    store = Store(settings, observe_commits=metrics.observe_commit if metrics else None)
    try:
        store.prepare()
        signer = load_receipt_signer(settings, signed_by=store.receipt_key_ids())
        store.record_receipt_key(signer.key_id, rfc3339(utc_now()))
        witness_ledger = open_ledger(settings, store, lambda: rfc3339(utc_now()))
    except BaseException:
        store.dispose()
        raise
    engine = Engine(settings, registry, store, signer)
    observers: list[Callable[[ExecutionEvent], None]] = [log_execution]
    if metrics is not None:
        observers.append(metrics.observe)
        if witness_ledger is not None:
            metrics.read_ledger(store.engine)

    def observe_execution(event: ExecutionEvent) -> None:
        """Every /execute answer: its log event, and its metrics when they are on."""
        for observe in observers:
            observe(event)

    if settings.mode == "demo":
        log.warning("demo mode: actions run without approval; set OPENEXEC_MODE=clawshield")
    if settings.database_kind == "postgresql" and settings.receipt_key_path is None:
        log.warning(
            "OPENEXEC_RECEIPT_KEY is unset: this instance signs receipts with its own key; "
            "other instances sharing the database verify them only if they share the key or "
            "list it in OPENEXEC_RECEIPT_PUBLIC_KEYS"
        )
    if settings.database_kind == "postgresql" and settings.ledger and not settings.ledger_key_path:
        log.warning(
            "OPENEXEC_LEDGER_KEY is unset: this instance signs the ledger with its own key; "
            "instances sharing the database must share one ledger key, or only one integrates"
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """Per worker: the packs' startup hooks before the first request, their shutdown
        hooks after the last."""
        try:
            registry.start()
        except PluginError as exc:
            log.error("startup failed: %s", exc)  # one line naming the plugin, then uvicorn's
            engine.close()
            store.dispose()
            raise
        if witness_ledger is not None:
            witness_ledger.start()
        if metrics is not None:
            metrics.worker_started()
        try:
            yield
        finally:
            if metrics is not None:
                metrics.worker_stopped()
            registry.stop()
            if witness_ledger is not None:
                witness_ledger.stop()
            engine.close()
            store.dispose()

    app = FastAPI(
        title="OpenExec",
        version=__version__,
        description="Governed, deterministic execution with signed receipts.",
        lifespan=lifespan,
        telemetry=NO_TELEMETRY,
        redirect_slashes=False,  # a redirect's Location was built from the Host header
        docs_url=None,  # /docs and /redoc come from docs.install_docs, served without a CDN
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.observe_execution = observe_execution
    routes.add_execute_route(app)  # first: routes are matched in order, /execute is hot
    app.include_router(routes.service)
    app.include_router(routes.receipts)
    app.state.ledger = witness_ledger
    if witness_ledger is not None:
        app.include_router(ledger.ledger)
    if metrics is not None:
        install_metrics_route(app, metrics)
    docs.install_docs(app)
    problems.install_error_handlers(app)
    app.add_middleware(
        middleware.BodyLimit,
        max_bytes=settings.max_request_bytes,
        observe=observe_execution,
    )
    app.add_middleware(middleware.HeadAsGet)
    return app

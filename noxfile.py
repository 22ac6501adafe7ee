"""nox sessions: tests (the default suite), lint, typecheck, bench and fuzz runs."""

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "hornbeam_trio", "tests", "examples", "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "--strict", "hornbeam_trio")


@nox.session
def bench(session: nox.Session) -> None:
    """Peers side by side, one core each (see benchmarks/README.md)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """atheris over the protocol cores, bounded; ``nox -s fuzz -- -runs=100000`` to change it.

    New inputs go to a temporary corpus (the seeds in fuzz/corpus stay as committed);
    a crash is saved as fuzz/artifacts/<harness>-crash-* and fails the session.
    """
    session.install("-e", ".[fuzz]")
    args = session.posargs or ["-max_total_time=120"]
    tmp = session.create_tmp()
    session.run("mkdir", "-p", "fuzz/artifacts", external=True)
    for harness in ("http_request", "websocket_frames"):
        session.run("mkdir", "-p", f"{tmp}/{harness}", external=True)
        session.run(
            "python",
            f"fuzz/{harness}.py",
            *args,
            f"-artifact_prefix=fuzz/artifacts/{harness}-",
            f"{tmp}/{harness}",
            f"fuzz/corpus/{harness}",
        )


@nox.session
def soak(session: nox.Session) -> None:
    """benchmarks/soak.py: echo, broadcast, HTTP and churn at once, plotted (default 5 min)."""
    session.install("-e", ".[soak]")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session
def guarantees(session: nox.Session) -> None:
    """tests/test_guarantees.py with many randomized scenarios (the default run: 60 fixed)."""
    session.install("-e", ".[test]")
    session.env["HORNBEAM_GUARANTEE_EXAMPLES"] = session.posargs[0] if session.posargs else "2000"
    session.env["HORNBEAM_GUARANTEE_RANDOM"] = "1"
    session.run("pytest", "tests/test_guarantees.py", "-p", "no:randomly", "--timeout", "3600")


@nox.session
def redis_faults(session: nox.Session) -> None:
    """tests/test_redis_outage.py with the 12 s outage too (redis-server must be installed)."""
    session.install("-e", ".[test,redis]")
    session.env["HORNBEAM_REDIS_FAULTS"] = "1"
    session.env["HORNBEAM_CI"] = "1"
    session.run("pytest", "tests/test_redis_outage.py", "-p", "no:randomly", *session.posargs)

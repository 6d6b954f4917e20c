"""The child's environment: built from nothing, never inherited from the service.

The service's environment may hold a database password or key paths, so a command gets only
``PATH`` (the policy's), ``HOME`` (the workspace), ``LANG=C.UTF-8``, ``TERM`` with a PTY, and
the request's overrides. An override is refused at payload validation when its name is on the
blocked list below: names that make a program load code or configuration from somewhere other
than what was approved (the dynamic loader, interpreters' startup hooks, git's and the shells'
hooks), or that would point it at other credentials, proxies or certificates. The list covers
the one OpenClaw converged on (its inherited and override lists together, since nothing here is
inherited) and adds ``OPENEXEC_`` and ``CLAWSHIELD_``. Names are compared in upper case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")

BLOCKED_PREFIXES = (
    "LD_",
    "DYLD_",
    "BASH_FUNC_",
    "OPENEXEC_",
    "CLAWSHIELD_",
    "GIT_CONFIG_",
    "NPM_CONFIG_",
    "CARGO_REGISTRIES_",
)

BLOCKED_NAMES = frozenset(
    [
        "PATH",
        "HOME",
        "SHELL",
        "ENV",
        "BASH_ENV",
        "BASHOPTS",
        "SHELLOPTS",
        "IFS",
        "PS4",
        "PROMPT_COMMAND",
        "HISTFILE",
        "FPATH",
        "KSH_ENV",
        "ZDOTDIR",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "NODE_OPTIONS",
        "NODE_PATH",
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "NODE_EXTRA_CA_CERTS",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONBREAKPOINT",
        "PYTHONUSERBASE",
        "PYTHONINSPECT",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "PERL5DB",
        "PERL5DBCMD",
        "RUBYLIB",
        "RUBYOPT",
        "TCLLIBPATH",
        "LUA_PATH",
        "LUA_CPATH",
        "GEM_HOME",
        "GEM_PATH",
        "BUNDLE_GEMFILE",
        "PHPRC",
        "PHP_INI_SCAN_DIR",
        "COMPOSER_HOME",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "JAVA_OPTS",
        "CLASSPATH",
        "MAVEN_OPTS",
        "SBT_OPTS",
        "GRADLE_OPTS",
        "GRADLE_USER_HOME",
        "ANT_OPTS",
        "DOTNET_STARTUP_HOOKS",
        "DOTNET_ADDITIONAL_DEPS",
        "CORECLR_PROFILER_PATH",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_COMMON_DIR",
        "GIT_EXEC_PATH",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
        "GIT_TEMPLATE_DIR",
        "GIT_EDITOR",
        "GIT_SEQUENCE_EDITOR",
        "GIT_EXTERNAL_DIFF",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_PROXY_COMMAND",
        "GIT_ASKPASS",
        "GIT_PAGER",
        "GIT_SSL_NO_VERIFY",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "SSH_ASKPASS",
        "EDITOR",
        "VISUAL",
        "FCEDIT",
        "SUDO_EDITOR",
        "PAGER",
        "MANPAGER",
        "LESSOPEN",
        "LESSCLOSE",
        "BROWSER",
        "CC",
        "CXX",
        "CARGO_HOME",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CMAKE_C_COMPILER",
        "CMAKE_CXX_COMPILER",
        "MAKEFLAGS",
        "MFLAGS",
        "CGO_CFLAGS",
        "CGO_LDFLAGS",
        "GOFLAGS",
        "GOPROXY",
        "GONOSUMCHECK",
        "GONOSUMDB",
        "GONOPROXY",
        "GOPRIVATE",
        "GOENV",
        "GOPATH",
        "LIBRARY_PATH",
        "CPATH",
        "C_INCLUDE_PATH",
        "CPLUS_INCLUDE_PATH",
        "OBJC_INCLUDE_PATH",
        "KUBECONFIG",
        "HELM_HOME",
        "DOCKER_HOST",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
        "DOCKER_CONTEXT",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AZURE_AUTH_LOCATION",
        "SSLKEYLOGFILE",
        "OPENSSL_CONF",
        "OPENSSL_ENGINES",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "CURL_HOME",
        "WGETRC",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "PIP_INDEX_URL",
        "PIP_PYPI_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_CONFIG_FILE",
        "PIP_FIND_LINKS",
        "PIP_TRUSTED_HOST",
        "UV_INDEX",
        "UV_INDEX_URL",
        "UV_PYTHON",
        "UV_EXTRA_INDEX_URL",
        "UV_DEFAULT_INDEX",
        "DENO_DIR",
        "BUN_CONFIG_REGISTRY",
        "YARN_RC_FILENAME",
        "VIRTUAL_ENV",
        "XDG_CONFIG_HOME",
        "HGRCPATH",
    ]
)


def blocked_reason(name: str) -> str | None:
    """Why an override of ``name`` is refused, or None."""
    if not NAME.fullmatch(name):
        return f"environment name {name[:64]!r} is not a valid name"
    upper = name.upper()
    if upper in BLOCKED_NAMES:
        return f"environment name {name!r} is blocked"
    for prefix in BLOCKED_PREFIXES:
        if upper.startswith(prefix):
            return f"environment name {name!r} is blocked (prefix {prefix})"
    return None


def child_environment(
    path: tuple[str, ...], workspace: Path, overrides: Mapping[str, str], pty: bool
) -> dict[str, str]:
    environment = {"PATH": ":".join(path), "HOME": str(workspace), "LANG": "C.UTF-8"}
    if pty:
        environment["TERM"] = "xterm-256color"
    environment.update(overrides)
    return environment

"""Upload an exported folder (model, adapter or dataset) to the Hugging Face Hub, with clear failure messages."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

REPO_TYPES = ("model", "dataset", "space")


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x, requests
    before), plus the builtin ones: none of them is an `HfHubHTTPError`."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            client = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(client, name) for name in names if hasattr(client, name)]
    return tuple(errors)


CONNECTION_ERRORS = _connection_errors()


class HubPushError(RuntimeError):
    """Pushing to the Hub failed; the message says why and what to do."""


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Create `repo_id` on the Hub (if needed) and upload `folder` to it.

    Args:
        folder: an exported folder (see `modeling_missrec.hub_cards.export`).
        repo_id: `org/name`.
        repo_type: `"model"` (models and adapters), `"dataset"` or `"space"` (an exported folder with `--space`: a
            Gradio Space).
        private: create the repository private (None: the Hub's default).
        token: a Hub token (default: the logged-in one or `HF_TOKEN`).
        commit_message: default `"Upload <folder name> with missrec-hf"`.
        api: an `HfApi` to use (default: a new one with `token`).

    Returns:
        The URL of the upload commit.

    Raises:
        HubPushError: offline mode, no connection, not authenticated / no write access, or another Hub error.
    """
    folder = Path(folder)
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type={repo_type!r} is not one of {list(REPO_TYPES)}")
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ValueError(f"{folder} is not an exported folder (missing or empty)")
    api = api or HfApi(token=token)
    where = f"the Hub {repo_type} repository {repo_id}"
    try:
        # A Space is created with its SDK (the Hub refuses one without); the folder's card names it too.
        sdk = {"space_sdk": "gradio"} if repo_type == "space" else {}
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **sdk)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type=repo_type,
            commit_message=commit_message or f"Upload {folder.name} with missrec-hf",
        )
    except OfflineModeIsEnabled as error:
        raise HubPushError(
            f"cannot push to {where}: offline mode is on (HF_HUB_OFFLINE=1). Unset it and retry; the exported "
            f"folder {folder} is complete and can also be uploaded later with `hf upload {repo_id} {folder}`."
        ) from error
    except CONNECTION_ERRORS as error:
        raise HubPushError(
            f"cannot push to {where}: the Hub cannot be reached ({type(error).__name__}: {error}). Check the network "
            f"or proxy and retry; the exported folder {folder} is complete."
        ) from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(
                f"cannot push to {where}: not authenticated or no write access (HTTP {status}). Log in with "
                "`hf auth login`, or pass a token with write access (--token or HF_TOKEN)."
            ) from error
        raise HubPushError(f"cannot push to {where}: the Hub answered HTTP {status}: {error}") from error
    return str(getattr(commit, "commit_url", commit))

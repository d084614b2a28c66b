"""The boto3 client a store signs with: credentials checked before any request, botocore's
own retries off (see :mod:`jangdok.stores.s3`), and every credential kept out of log records
(:mod:`jangdok.redact`)."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from ...errors import ConfigError, CredentialsError, NoCredentials
from ...redact import protect
from ...settings import Settings, came_without, mask_secret, mask_url, reveal

__all__ = ["make_client"]


def make_client(settings: Settings) -> tuple[Any, str]:
    """A boto3 S3 client for these settings and its masked access key, with credentials
    checked before any request.

    Raises CredentialsError (the seed's "Unable to locate credentials") when there are none.
    """
    given = {"AWS_ACCESS_KEY_ID": settings.access_key_id, "AWS_SECRET_ACCESS_KEY": settings.secret_access_key,
             "AWS_SESSION_TOKEN": settings.session_token}
    present = [name for name, value in given.items() if value]
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not given[name]]
    if present and missing:
        raise NoCredentials(
            f"S3 client initialization failed: Unable to locate credentials: {' and '.join(present)} "
            f"{'is' if len(present) == 1 else 'are'} set (in {settings.sources.get('credentials', 'the arguments')}) "
            f"but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing there; credentials "
            "come whole from one place (arguments, environment or a .env file): set them together."
        )
    protect(reveal(settings.access_key_id), reveal(settings.secret_access_key), reveal(settings.session_token))
    try:
        session = boto3.session.Session(
            aws_access_key_id=reveal(settings.access_key_id),
            aws_secret_access_key=reveal(settings.secret_access_key),
            aws_session_token=reveal(settings.session_token),
            region_name=settings.region,
            profile_name=None if settings.access_key_id else settings.profile,
        )
        credentials = session.get_credentials()
        # Those of a profile or role too: the values signed with are the ones to keep out of logs.
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except bce.ProfileNotFound as exc:
        # A profile named but not there is a typo or a missing file to fix, like a rejected secret:
        # not "no credentials", which would quietly cache in the fallback folder instead.
        raise CredentialsError(
            f"S3 client initialization failed: AWS profile {settings.profile!r} (from "
            f"{settings.sources.get('credentials', 'argument')}) not found; create it with "
            f"'aws configure --profile {settings.profile}', or correct or unset AWS_PROFILE"
        ) from exc
    except bce.BotoCoreError as exc:
        raise NoCredentials(f"S3 client initialization failed: {exc}; check {settings.credentials_source}") from exc
    if frozen is None or not frozen.access_key:
        if "credentials" in settings.withheld:
            # Not NoCredentials: falling back to a folder of this machine would split the cache.
            raise CredentialsError("S3 client initialization failed: " + came_without(
                "credentials", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in its environment "
                "or a .env file, or give it an AWS profile or role"))
        raise NoCredentials(
            "S3 client initialization failed: Unable to locate credentials. Tried: explicit arguments, "
            "environment variables (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE), .env files "
            "(project folder, current folder), the AWS shared config and credentials files. Set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run 'aws configure'."
        )
    protect(frozen.access_key, frozen.secret_key, frozen.token)
    config = Config(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},  # retries are ours: see module doc
        # Path-style addressing is what self-hosted S3 servers support; AWS picks its own.
        # Integrity is end to end (every entry carries its own digest), so botocore's CRC32 of
        # each body, and over http its SHA-256 payload signature, would only read the bytes
        # again: ~24 ms per 50 MB GET, and a PUT's body read three times instead of once.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if settings.endpoint_url else "auto", "payload_signing_enabled": False},
        # A batch's threads and the helpers of their large transfers: concurrency of each.
        max_pool_connections=2 * settings.concurrency + 2,
        # The endpoint is the one the settings resolved (None: AWS), never one boto3 finds on
        # its own in this process's AWS_ENDPOINT_URL or AWS config: a cache that travelled to
        # a worker whose environment names another server would otherwise be another cache,
        # and its credentials would be sent there.
        ignore_configured_endpoint_urls=True,
    )
    try:
        client = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
    except (bce.BotoCoreError, ValueError) as exc:
        endpoint = mask_url(settings.endpoint_url) if settings.endpoint_url else None
        raise ConfigError(f"S3 client initialization failed: {exc}; check AWS_REGION "
                          f"({settings.region!r}) and AWS_ENDPOINT_URL ({endpoint!r})") from exc
    return client, mask_secret(frozen.access_key)

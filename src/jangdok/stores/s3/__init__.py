"""A store in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph, R2, ...) via boto3.

Retries are ours, not botocore's: one policy (:mod:`jangdok.retry`) covers requests *and*
reading response bodies, which botocore never retries; a body that breaks mid-transfer is
resumed with a ranged GET pinned to the same ETag, so a long download is not restarted and
never silently mixes two versions of an object. Large objects travel in parallel: ranged GETs
in, multipart parts out (``part_size`` bytes each, ``concurrency`` requests in flight). Every
botocore exception is translated into :mod:`jangdok.errors` by one table (:mod:`.translate`),
with the seed guide's wording and what to check. What the server honours of conditional
requests is probed when first needed and remembered per endpoint and bucket
(:mod:`.capabilities`).

- :mod:`.client`: the boto3 client, and credentials kept out of logs;
- :mod:`.translate`: what a server's answer means;
- :mod:`.capabilities`: what the server honours, probed lazily;
- :mod:`.reader`: reading an object, its large ones in parallel ranges;
- :mod:`.multipart`: writing a large object in parallel parts;
- :mod:`.store`: the store contract over S3 requests.
"""

from .client import make_client
from .store import S3Store

__all__ = ["S3Store", "make_client"]

"""The GCS emulator of tests/test_remote_workdir.py: gcp-storage-emulator in memory, with the
generation headers that its downloads lack.

    python tests/gcs_emulator.py PORT BUCKET

Tensorstore (Orbax's arrays on gs://) reads an object's generation from the `x-goog-generation`
header of its download before it rewrites the object conditionally; without the header it fails
with "Malformed StorageGeneration". Real GCS sends it.
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 (a missing object: the emulator's own handler answers 404)
        obj = None
    if obj is not None:
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    _download(request, response, storage, *args, **kwargs)


# Before the server module builds its route table from the handlers.
objects.download = _download_with_generation

from gcp_storage_emulator.server import create_server  # noqa: E402

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()

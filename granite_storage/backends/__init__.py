"""Storage backends. Each lives in its own module, imported by name, so an
optional dependency (aioboto3 for S3) is only needed where it is used."""

"""Dev runner: embedded S3, sample data, importers, and the HTTP app on one machine."""

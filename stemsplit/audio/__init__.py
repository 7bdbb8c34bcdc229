"""Audio in and out: `decode` (files to float32 blocks), `resample`, `spool` (long signals in
anonymous temporary files) and `encode` (atomic stem files). Nothing is re-exported here: each
name has one home."""

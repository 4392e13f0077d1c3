-- What the blob store needs to remember about an upload between requests
-- (S3: the multipart upload, its parts and the waiting tail), so any replica
-- can take its next chunk.
ALTER TABLE uploads ADD COLUMN backend_state BYTEA;

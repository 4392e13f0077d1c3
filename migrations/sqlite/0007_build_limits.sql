-- Build isolation: a project's own build limits, overriding the server's
-- [builds.limits] key by key: a JSON object with any of memory_bytes,
-- processes, cpus, disk_bytes, log_bytes. NULL: the server's limits.
ALTER TABLE projects ADD COLUMN build_limits TEXT;

-- Stack rebase: a rebase is recorded in the image's build history as a row
-- of `builds` of its own kind, finished when written (its log says what
-- was swapped for what). Builds are `build`; existing rows stay that.
ALTER TABLE builds ADD COLUMN kind TEXT NOT NULL DEFAULT 'build';

-- Versions as intervals (syncd/versions.py). A row's content was Stripe's state at some moment
-- in [fetched_from, fetched_at): a fetch is known only to have read Stripe between sending the
-- request and receiving the answer, an event snapshot only to its `created` second. Until now a
-- row kept one moment (`fetched_at`, the answer's arrival), so a slow answer read before a
-- change but arriving after a fresher fetch looked newer and overwrote it.
--
-- Stripe's clock is known to us only through the one-second `Date` header, so these bounds are
-- about a second wide until a process has seen many answers. Two fetches made by the same
-- process are ordered exactly by its own monotonic clock instead (a request sent after another's
-- answer arrived reads a state at least as new): `fetched_by` names the process (a random id
-- per start, NULL for content confirmed by several processes) and `fetched_local` holds
-- [sent, received] on its monotonic clock. An event snapshot listed by the process gets
-- [its created second, at the earliest; the list's answer]: the change preceded its listing.
--
-- Rows written before this migration do not know when their interval began: '-infinity' says
-- so honestly (a later write that began before their `fetched_at` cannot be ordered against
-- them and is settled by a fetch). Constant defaults add the columns without rewriting tables.
DO $migration$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = to_regnamespace(replace('{mirror}', '"', '')) AND c.relkind = 'r'
           AND EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attname = 'fetched_at' AND NOT a.attisdropped)
    LOOP
        EXECUTE format(
            'ALTER TABLE {mirror}.%I ADD COLUMN fetched_from timestamptz NOT NULL DEFAULT ''-infinity'','
            ' ADD COLUMN fetched_by bigint, ADD COLUMN fetched_local float8[]',
            t.relname);
    END LOOP;
END $migration$;

-- Objects to fetch again because two versions of them overlap with different content (the
-- order of the two is unknown). Written by the writer's statements through refetch_later, in the
-- transaction of the write that found the overlap; the event stream's loop fetches each one
-- once Stripe's clock has certainly passed `not_before` (the end of the row's version), so the
-- new answer is newer than both, and deletes the entry in the transaction that writes it.
CREATE TABLE {state}.refetch_queue (
    table_name  text NOT NULL,
    object_id   text NOT NULL,
    parent_id   text,                 -- owned children are fetched again through their parent
    not_before  timestamptz NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, object_id)
);

-- Called from the ON CONFLICT ... WHERE of the writer's upserts when the order is unknown: it
-- queues the object and answers false, so the row keeps its content.
CREATE FUNCTION {state}.refetch_later(
    table_name text, object_id text, parent_id text, not_before timestamptz
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {state}.refetch_queue AS q (table_name, object_id, parent_id, not_before)
    VALUES (table_name, object_id, parent_id, not_before)
    ON CONFLICT ON CONSTRAINT refetch_queue_pkey
    DO UPDATE SET not_before = GREATEST(q.not_before, EXCLUDED.not_before);
    RETURN false;
END $$;

-- The writer's ordering guard, one definition for every statement that may overwrite a row
-- (sql/queries/writer.sql): may content `new_raw`, held by Stripe at some moment in
-- [new_from, new_to), replace the row's `row_raw`, held in [row_from, row_to)? Versions fetched
-- by the same process (`*_by`) also compare on its own clock (`*_local`). A NULL `new_raw` means
-- "absent from a complete list that should show it" (a child its parent dropped).
CREATE FUNCTION {state}.version_admits(
    row_from timestamptz, row_to timestamptz, row_by bigint, row_local float8[], row_raw jsonb,
    new_from timestamptz, new_to timestamptz, new_by bigint, new_local float8[], new_raw jsonb,
    new_gone boolean, tbl regclass, object_id text, parent_id text
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    same_process boolean := coalesce(row_by = new_by, false);
    -- Either clock may tell: Stripe's bounds, or the process's own when both are its versions.
    newer boolean := new_from >= row_to OR (same_process AND new_local[1] >= row_local[2]);
    older boolean := new_to <= row_from OR (same_process AND new_local[2] <= row_local[1]);
BEGIN
    IF new_gone OR newer THEN
        RETURN true;  -- Stripe never undeletes; or certainly newer
    ELSIF older THEN
        RETURN false;  -- certainly older: a stale write
    ELSIF row_raw IS NOT DISTINCT FROM new_raw THEN
        -- The same content seen again: the row's interval moves on (GREATEST of both ends).
        RETURN new_to > row_to OR new_from > row_from OR (same_process AND new_local > row_local);
    END IF;
    -- Overlapping versions with different content: which is newer is unknown. Keep the row and
    -- fetch the object again once Stripe's clock has passed both (refetch_queue).
    RETURN {state}.refetch_later(
        (SELECT relname FROM pg_class WHERE oid = tbl), object_id, parent_id,
        GREATEST(row_to, new_to));
END $$;

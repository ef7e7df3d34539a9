-- The customers.user_id trigger ran its PL/pgSQL for every upsert, also when a resync only
-- confirmed an unchanged row (about half the cost of such an upsert). On update it now runs only
-- when the metadata changed; inserts are unchanged. A changed app.user_id_metadata_key reaches
-- existing rows when their metadata next changes (or with `UPDATE ... SET raw = raw`).
DROP TRIGGER customers_set_user_id ON {mirror}.customers;
CREATE TRIGGER customers_set_user_id BEFORE INSERT ON {mirror}.customers
    FOR EACH ROW EXECUTE FUNCTION {mirror}.customers_set_user_id();
CREATE TRIGGER customers_set_user_id_on_update BEFORE UPDATE OF raw ON {mirror}.customers
    FOR EACH ROW WHEN (OLD.raw->'metadata' IS DISTINCT FROM NEW.raw->'metadata')
    EXECUTE FUNCTION {mirror}.customers_set_user_id();

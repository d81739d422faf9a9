//! What the upstream's catalog said of its tables and views (system ones
//! included) when the session began: the source column of each result column
//! (for column rules), the columns a `*` stands for (for policies on
//! columns), which columns are NOT NULL (a WHERE that only null-tests them
//! keeps every row) and which alone are a unique key (a write pinned to one
//! row by it; the row cap has PostgreSQL confirm that when the write runs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::upstream::{simple_query, Upstream, UpstreamError};

/// The session's catalog read.
#[derive(Debug, Default)]
pub struct Catalog {
    tables: HashMap<u32, TableInfo>,
    /// OIDs by `schema.table`, and by the name after its last `.`: what a
    /// statement's qualified and unqualified names may mean (see [`Catalog::named`]).
    by_qualified: HashMap<String, Vec<u32>>,
    by_unqualified: HashMap<String, Vec<u32>>,
    /// A pinned write found its table changed since the read: unique keys are
    /// no longer offered (every later write is counted in full).
    keys_changed: AtomicBool,
    /// See [`Catalog::has_view_sources`].
    has_view_sources: bool,
    /// The session ran (or asked to run) a statement that may change tables'
    /// columns: stars are no longer resolved from this read.
    columns_changed: AtomicBool,
    /// Reading the catalog again failed since the last such statement (see
    /// [`Catalog::wants_reread`]).
    reread_failed: AtomicBool,
    /// See [`Catalog::for_one_request`].
    one_request: AtomicBool,
}

impl Catalog {
    /// Read the upstream's catalog on a fresh connection (before the relay
    /// starts), with `search_path` pinned to `pg_catalog`. Views' query
    /// trees already in `views` (for this `connection`) are not read again.
    pub async fn load(up: &mut Upstream, views: &ViewCache, connection: &str) -> Result<Self, UpstreamError> {
        let known = views.keys(connection);
        let tables = match read_tables(up, &known, views, connection).await? {
            Some(tables) => tables,
            // A tree another session dropped meanwhile (its view was replaced): all of them.
            None => read_tables(up, &[], views, connection).await?.ok_or_else(|| {
                UpstreamError::Protocol("the catalog read left out a view's query tree it was asked for".into())
            })?,
        };
        Ok(Self::from_tables(tables))
    }

    /// A catalog of these tables (by OID).
    pub fn from_tables(tables: HashMap<u32, TableInfo>) -> Self {
        let mut by_qualified: HashMap<String, Vec<u32>> = HashMap::new();
        let mut by_unqualified: HashMap<String, Vec<u32>> = HashMap::new();
        for (oid, t) in &tables {
            by_qualified.entry(t.name.clone()).or_default().push(*oid);
            if let Some((_, table)) = t.name.rsplit_once('.') {
                by_unqualified.entry(table.to_string()).or_default().push(*oid);
            }
            // `pg_temp.t` is the session's own temporary table `t`, whatever
            // its schema's number (`pg_temp_3`).
            if let Some((_, table)) = t.name.split_once('.').filter(|_| t.temp) {
                by_qualified.entry(format!("pg_temp.{table}")).or_default().push(*oid);
            }
        }
        let has_view_sources = tables.values().any(|t| t.origins.iter().any(Option::is_some));
        Catalog {
            has_view_sources,
            tables,
            by_qualified,
            by_unqualified,
            keys_changed: AtomicBool::new(false),
            columns_changed: AtomicBool::new(false),
            reread_failed: AtomicBool::new(false),
            one_request: AtomicBool::new(false),
        }
    }

    /// The catalog read again inside a session, from the rows its
    /// [`Catalog::reread_sql`] got; `None` if a view's query tree it left out
    /// is no longer in `views`.
    pub fn from_rows(
        rows: Vec<Vec<Option<String>>>,
        views: &ViewCache,
        connection: &str,
    ) -> Result<Option<Self>, UpstreamError> {
        Ok(tables_from_rows(rows, views, connection)?.map(Self::from_tables))
    }

    /// The statements that read the catalog again on a session's
    /// connection and leave the session as it was, in two batches (each
    /// ends with a Sync; the second runs even when the first failed): the
    /// first pins `search_path` for the read in a transaction of its own (or,
    /// `in_transaction`, under a savepoint in the client's) and reads; the
    /// second rolls that back.
    pub fn reread_sql(views: &ViewCache, connection: &str, in_transaction: bool) -> [Vec<String>; 2] {
        let pin = "SET LOCAL search_path = pg_catalog, pg_temp".to_string();
        let select = read_sql(&views.keys(connection));
        if in_transaction {
            [
                vec!["SAVEPOINT wardgate_catalog".into(), pin, select],
                vec!["ROLLBACK TO SAVEPOINT wardgate_catalog".into(), "RELEASE SAVEPOINT wardgate_catalog".into()],
            ]
        } else {
            [vec!["BEGIN".into(), pin, select], vec!["ROLLBACK".into()]]
        }
    }

    /// Should the session read the catalog again before a request that
    /// consults it? Yes once it ran a statement that may change columns,
    /// unless a read since then failed.
    pub fn wants_reread(&self) -> bool {
        self.columns_changed.load(Ordering::Relaxed) && !self.reread_failed.load(Ordering::Relaxed)
    }

    /// A read inside the client's transaction: what it saw may be rolled
    /// back, so it is stale once the request it was made for is judged (see
    /// [`Catalog::judged`]).
    pub fn for_one_request(&self) {
        self.one_request.store(true, Ordering::Relaxed);
    }

    /// A request was judged with this read (see [`Catalog::for_one_request`]).
    pub fn judged(&self) {
        if self.read_in_transaction() {
            self.columns_changed();
        }
    }

    /// Was this read made inside the client's transaction (see
    /// [`Catalog::for_one_request`])? Then, within its request too, a
    /// transaction statement (`ROLLBACK TO SAVEPOINT`, `PREPARE
    /// TRANSACTION`, …) may undo what it saw.
    pub fn read_in_transaction(&self) -> bool {
        self.one_request.load(Ordering::Relaxed)
    }

    /// Reading the catalog again failed: not tried again until the session
    /// runs another statement that may change columns.
    pub fn reread_failed(&self) {
        self.reread_failed.store(true, Ordering::Relaxed);
    }

    /// How many tables and views the read holds.
    pub fn table_count(&self) -> usize {
        self.tables.len()
    }

    /// Does the read know a table or view that `table` (as a statement names it) may mean?
    pub fn knows(&self, table: &str) -> bool {
        self.named(table).next().is_some()
    }

    /// Every table that `table` (as a statement names it) may mean: `schema.t`
    /// that table alone; `t` the table of that name in every schema.
    fn named(&self, table: &str) -> impl Iterator<Item = (u32, &TableInfo)> {
        let index = if table.contains('.') { &self.by_qualified } else { &self.by_unqualified };
        index.get(table).into_iter().flatten().filter_map(|oid| self.tables.get(oid).map(|t| (*oid, t)))
    }

    /// The table with this OID.
    pub fn table(&self, oid: u32) -> Option<&TableInfo> {
        self.tables.get(&oid)
    }

    /// The column a result column with this table OID and attnum holds: a
    /// view's (or materialized view's) column that is a plain reference to
    /// another column is that column, through views of views (see
    /// [`super::lineage`]); any other is itself. `None`: no such column in
    /// the read.
    pub fn source(&self, mut oid: u32, mut attnum: i16) -> Option<(&TableInfo, &str)> {
        // Bounded, though PostgreSQL allows no cycle of views.
        for _ in 0..32 {
            let t = self.tables.get(&oid)?;
            let i = usize::try_from(attnum).ok()?.checked_sub(1)?;
            let name = t.columns.get(i).filter(|n| !n.is_empty())?;
            match t.origins.get(i).copied().flatten() {
                Some((o, a)) if self.tables.contains_key(&o) => (oid, attnum) = (o, a),
                _ => return Some((t, name)),
            }
        }
        None
    }

    /// The table named exactly `schema.table`.
    pub fn qualified(&self, name: &str) -> Option<&TableInfo> {
        self.by_qualified.get(name).and_then(|oids| self.tables.get(oids.first()?))
    }

    /// Is some view's column a plain reference to another column? Without
    /// one, a request's columns need no [`Catalog::sources_of`].
    pub fn has_view_sources(&self) -> bool {
        self.has_view_sources
    }

    /// The columns that `column` of a view that `table` (as a statement names
    /// it) may mean is a plain reference to, as `(schema.table, column)` (see
    /// [`Catalog::source`]); none for a table's column.
    pub fn sources_of(&self, table: &str, column: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (oid, t) in self.named(table).filter(|(_, t)| !t.origins.is_empty()) {
            let Some(i) = t.columns.iter().position(|c| c == column) else { continue };
            let Some((source, name)) = i16::try_from(i + 1).ok().and_then(|attnum| self.source(oid, attnum)) else {
                continue;
            };
            if !std::ptr::eq(source, t) {
                out.push((source.name.clone(), name.to_string()));
            }
        }
        out
    }

    /// Is `column` NOT NULL in any table that `table` (as a statement names
    /// it) may mean? (`WHERE col IS NOT NULL` then keeps every row of at least one.)
    pub fn not_null_in_any(&self, table: &str, column: &str) -> bool {
        self.named(table).any(|(_, t)| t.is_not_null(column))
    }

    /// `(table OID, unique index OID)` of every table that `table` may mean,
    /// when `column` alone is a unique key in each of them; empty otherwise,
    /// and always once [`Catalog::keys_changed`] was called (see
    /// [`crate::sql::rowcap::UniqueKeys`]).
    pub fn unique_in_every(&self, table: &str, column: &str) -> Vec<(u32, u32)> {
        if self.keys_changed.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let keys: Option<Vec<(u32, u32)>> =
            self.named(table).map(|(oid, t)| t.unique_index(column).map(|index| (oid, index))).collect();
        keys.unwrap_or_default()
    }

    /// The columns of every table that `table` (as a statement names it) may
    /// mean, in attnum order, table after table; `None` when no table has that
    /// name, and always once [`Catalog::columns_changed`] was called (see
    /// [`crate::sql::columns::expand_stars`]).
    pub fn columns_of(&self, table: &str) -> Option<Vec<&str>> {
        if self.columns_changed.load(Ordering::Relaxed) {
            return None;
        }
        let mut found = false;
        let mut columns = Vec::new();
        for (_, t) in self.named(table) {
            found = true;
            columns.extend(t.columns.iter().filter(|c| !c.is_empty()).map(String::as_str));
        }
        found.then_some(columns)
    }

    /// The session is about to run a statement that may add, rename or drop
    /// columns (DDL, or code the gateway cannot see into): resolve no more
    /// stars from this read.
    pub fn columns_changed(&self) {
        self.columns_changed.store(true, Ordering::Relaxed);
        self.reread_failed.store(false, Ordering::Relaxed);
    }

    /// A pinned write found the table its name resolves to, or that table's
    /// key, changed since the read: offer no unique keys from now on.
    pub fn keys_changed(&self) {
        self.keys_changed.store(true, Ordering::Relaxed);
    }
}

/// A table known to the upstream's catalog.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    /// `schema.table`.
    pub name: String,
    /// Column names in attnum order (dropped columns as empty strings).
    pub columns: Vec<String>,
    /// Which of those columns are declared NOT NULL (same order).
    pub not_null: Vec<bool>,
    /// For each of those columns that alone is the key of a valid, unique,
    /// non-partial index, on a table without inheritance children (a
    /// partitioned table's unique index holds across its partitions), that
    /// index's OID: `col = constant` matches one row at most (same order).
    pub unique_index: Vec<Option<u32>>,
    /// For a view or materialized view outside the system schemas: each
    /// column's source, when it is a plain reference to another table's
    /// column (table OID, attnum; same order; empty for tables).
    pub origins: Vec<Option<(u32, i16)>>,
    /// One of the session's own temporary tables: statements may also name
    /// it `pg_temp.table` (other sessions' temporary tables are left out of
    /// the catalog: no statement of this session can reach them).
    pub temp: bool,
}

impl TableInfo {
    /// Is `column` declared NOT NULL here?
    pub fn is_not_null(&self, column: &str) -> bool {
        self.columns.iter().zip(&self.not_null).any(|(name, nn)| *nn && name == column)
    }

    /// The unique index whose sole key is `column` here, if any (see
    /// [`TableInfo::unique_index`]).
    pub fn unique_index(&self, column: &str) -> Option<u32> {
        self.columns.iter().zip(&self.unique_index).find_map(|(name, index)| index.filter(|_| name == column))
    }
}

/// Views' column sources (see [`TableInfo::origins`]) kept across sessions,
/// by connection, view OID and the `xmin` of the view's rule: `CREATE OR
/// REPLACE VIEW` writes a new rule row, so a changed view is read again.
/// Each session's read still lists every view; only the query trees (a few
/// KiB each) of views seen before are not sent again.
#[derive(Debug, Default)]
pub struct ViewCache {
    views: parking_lot::Mutex<HashMap<String, ViewOrigins>>,
}

/// A connection's views' column sources by `(view OID, rule xmin)`.
type ViewOrigins = HashMap<(u32, u32), Vec<Option<(u32, i16)>>>;

impl ViewCache {
    fn keys(&self, connection: &str) -> Vec<(u32, u32)> {
        self.views.lock().get(connection).map(|m| m.keys().copied().collect()).unwrap_or_default()
    }
}

/// Column names as the catalog read sends them: each hex-encoded UTF-8 (a
/// name may hold any character, commas included), comma-separated, in attnum
/// order; a dropped column is empty. `None` if one is not hex of UTF-8.
fn column_names(list: &str) -> Option<Vec<String>> {
    list.split(',').map(|h| hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok())).collect()
}

/// The catalog read: one row per table, view, materialized view, partitioned
/// and foreign table, the system catalogs' included (see [`tables_from_rows`]).
/// The query trees of the views in `known` (`(oid, rule xmin)`) are not sent.
/// Runs with `search_path` pinned to `pg_catalog, pg_temp` (the role's own
/// could list a schema before pg_catalog, whose look-alike tables would then
/// answer). Each catalog is scanned once: `pg_attribute` grouped by table,
/// `pg_index` by (table, column). The last column tells the session's own
/// temporary tables (`own`) and other sessions' (`other`): those are read so
/// that their views' cached trees, shared by the connection's sessions, stay
/// cached, and then left out.
fn read_sql(known: &[(u32, u32)]) -> String {
    let known_list = known.iter().map(|(oid, xmin)| format!("{oid}:{xmin}")).collect::<Vec<_>>().join(",");
    format!(
        "SELECT c.oid::text, n.nspname || '.' || c.relname, coalesce(a.names, ''), coalesce(a.not_null, ''), \
         coalesce(a.keys, ''), (c.relkind = 'p' OR NOT c.relhassubclass)::text, \
         CASE WHEN r.oid IS NOT NULL AND NOT (c.oid::text || ':' || r.xmin::text = ANY ('{{{known_list}}}'::text[])) \
              THEN r.ev_action::text END, \
         r.xmin::text, CASE WHEN n.oid = pg_catalog.pg_my_temp_schema() THEN 'own' \
              WHEN pg_catalog.pg_is_other_temp_schema(n.oid) THEN 'other' END \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN (SELECT a.attrelid, \
              string_agg(CASE WHEN a.attisdropped THEN '' ELSE encode(convert_to(a.attname::text, 'UTF8'), 'hex') END, \
                         ',' ORDER BY a.attnum) AS names, \
              string_agg(CASE WHEN a.attnotnull AND NOT a.attisdropped THEN 't' ELSE 'f' END, '' ORDER BY a.attnum) \
                         AS not_null, \
              string_agg(CASE WHEN a.attisdropped THEN '' ELSE coalesce(k.unique_index::text, '') END, ',' ORDER BY a.attnum) \
                         AS keys \
              FROM pg_attribute a \
              LEFT JOIN (SELECT i.indrelid, i.indkey[0] AS attnum, min(i.indexrelid) AS unique_index FROM pg_index i \
                         WHERE i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 AND i.indpred IS NULL \
                         AND i.indexprs IS NULL GROUP BY 1, 2) k ON k.indrelid = a.attrelid AND k.attnum = a.attnum \
              WHERE a.attnum > 0 GROUP BY a.attrelid) a ON a.attrelid = c.oid \
         LEFT JOIN pg_rewrite r ON r.ev_class = c.oid AND r.rulename = '_RETURN' AND c.relkind IN ('v','m') \
              AND n.nspname NOT IN ('pg_catalog','information_schema') \
         WHERE c.relkind IN ('r','v','m','p','f') AND n.nspname NOT LIKE 'pg_toast%' LIMIT 20000"
    )
}

/// Read the tables and views on a fresh connection (see [`read_sql`]); `None`
/// if a view in `known` is no longer in `views`.
async fn read_tables(
    up: &mut Upstream,
    known: &[(u32, u32)],
    views: &ViewCache,
    connection: &str,
) -> Result<Option<HashMap<u32, TableInfo>>, UpstreamError> {
    let sql = format!("BEGIN; SET LOCAL search_path = pg_catalog, pg_temp; {}; COMMIT", read_sql(known));
    let rows = simple_query(up, &sql).await?;
    tables_from_rows(rows, views, connection)
}

/// The tables and views of the catalog read's rows (oid -> name, columns,
/// their NOT NULL and unique-key flags, a view's column sources). Query
/// trees not sent come from `views`; `None` if one is no longer there.
fn tables_from_rows(
    rows: Vec<Vec<Option<String>>>,
    views: &ViewCache,
    connection: &str,
) -> Result<Option<HashMap<u32, TableInfo>>, UpstreamError> {
    let mut cache = views.views.lock();
    let cache = cache.entry(connection.to_string()).or_default();
    let mut seen = std::collections::HashSet::new();
    let mut map = HashMap::new();
    for r in rows {
        if let (Some(Some(oid)), Some(Some(name)), Some(cols)) = (r.first(), r.get(1), r.get(2)) {
            if let Ok(oid) = oid.parse::<u32>() {
                let columns = column_names(cols.as_deref().unwrap_or("")).ok_or_else(|| {
                    UpstreamError::Protocol(format!("the catalog read gave table {name} malformed column names"))
                })?;
                let flags = r.get(3).and_then(|f| f.as_deref()).unwrap_or("");
                let not_null = flags.bytes().map(|b| b == b't').collect();
                // A table with inheritance children: its unique indexes hold for its own rows only.
                let keys_hold = r.get(5).and_then(|f| f.as_deref()) == Some("true");
                let indexes = r.get(4).and_then(|f| f.as_deref()).unwrap_or("");
                let unique_index = indexes.split(',').map(|i| i.parse().ok().filter(|_| keys_hold)).collect();
                let xmin = r.get(7).and_then(|f| f.as_deref()).and_then(|x| x.parse::<u32>().ok());
                let origins = match (xmin, r.get(6).and_then(|f| f.as_deref())) {
                    (None, _) => Vec::new(),
                    (Some(xmin), Some(tree)) => {
                        let origins = view_origins(tree, columns.len()).ok_or_else(|| {
                            UpstreamError::Protocol(format!(
                                "the catalog read gave view {name} a query tree it cannot read"
                            ))
                        })?;
                        cache.insert((oid, xmin), origins.clone());
                        seen.insert((oid, xmin));
                        origins
                    }
                    (Some(xmin), None) => match cache.get(&(oid, xmin)) {
                        Some(origins) => {
                            seen.insert((oid, xmin));
                            origins.clone()
                        }
                        None => return Ok(None),
                    },
                };
                // Another session's temporary table: no statement of this
                // session can reach it, so no name resolves to it (its view
                // tree above stays cached for that session).
                let temp = match r.get(8).and_then(|f| f.as_deref()) {
                    Some("other") => continue,
                    temp => temp == Some("own"),
                };
                map.insert(oid, TableInfo { name: name.clone(), columns, not_null, unique_index, origins, temp });
            }
        }
    }
    // Views dropped or replaced since: forgotten.
    cache.retain(|key, _| seen.contains(key));
    Ok(Some(map))
}

/// Each of a view's `n` columns' source (see [`TableInfo::origins`]), from its stored query tree.
fn view_origins(tree: &str, n: usize) -> Option<Vec<Option<(u32, i16)>>> {
    let mut origins = vec![None; n];
    for (attnum, table, column) in super::lineage::origins(tree)? {
        *origins.get_mut(usize::try_from(attnum).ok()?.checked_sub(1)?)? = Some((table, column));
    }
    Some(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, columns: &[&str]) -> TableInfo {
        let n = columns.len();
        TableInfo {
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            not_null: vec![true; n],
            unique_index: vec![None; n],
            ..Default::default()
        }
    }

    #[test]
    fn the_sessions_own_temporary_tables_answer_to_pg_temp() {
        let mut tables = HashMap::new();
        tables.insert(1, TableInfo { temp: true, ..table("pg_temp_3.scratch", &["id"]) });
        tables.insert(2, table("public.scratch", &["id", "email"]));
        tables.insert(3, table("pg_temp_4.other", &["id"]));
        let catalog = Catalog::from_tables(tables);
        assert_eq!(catalog.columns_of("pg_temp.scratch"), Some(vec!["id"]));
        assert!(catalog.knows("pg_temp_3.scratch"));
        assert_eq!(catalog.columns_of("scratch").map(|c| c.len()), Some(3));
        // Only the session's own: a schema the read did not flag is not pg_temp.
        assert!(!catalog.knows("pg_temp.other"));
    }

    /// Rows as the catalog read sends them (see [`read_sql`]).
    fn read_row(oid: &str, name: &str, columns: &[&str], temp: Option<&str>) -> Vec<Option<String>> {
        let hex_names = columns.iter().map(hex::encode).collect::<Vec<_>>().join(",");
        let flags = "f".repeat(columns.len());
        let keys = vec![""; columns.len()].join(",");
        [
            Some(oid),
            Some(name),
            Some(hex_names.as_str()),
            Some(flags.as_str()),
            Some(keys.as_str()),
            Some("true"),
            None,
            None,
            temp,
        ]
        .into_iter()
        .map(|v| v.map(str::to_string))
        .collect()
    }

    #[test]
    fn another_sessions_temporary_tables_are_left_out_of_the_read() {
        let rows = vec![
            read_row("1", "pg_temp_3.scratch", &["id"], Some("own")),
            read_row("2", "pg_temp_4.scratch", &["id", "email"], Some("other")),
            read_row("3", "public.orders", &["id"], None),
        ];
        let catalog = Catalog::from_rows(rows, &ViewCache::default(), "shop").unwrap().unwrap();
        assert_eq!(catalog.table_count(), 2);
        assert_eq!(catalog.columns_of("scratch"), Some(vec!["id"]));
        assert_eq!(catalog.columns_of("pg_temp.scratch"), Some(vec!["id"]));
        assert!(!catalog.knows("pg_temp_4.scratch"));
        assert!(catalog.knows("public.orders"));
    }

    #[test]
    fn a_views_plain_columns_are_their_sources_through_views_of_views() {
        let mut v1 = table("public.v1", &["id", "ssn", "em"]);
        v1.origins = vec![Some((1, 1)), Some((1, 3)), None];
        let mut v2 = table("public.v2", &["x", "y"]);
        v2.origins = vec![Some((10, 2)), Some((10, 3))];
        let mut dangling = table("public.v3", &["z"]);
        dangling.origins = vec![Some((99, 1))];
        let catalog = Catalog::from_tables(HashMap::from([
            (1, table("public.customers", &["id", "", "ssn"])),
            (10, v1),
            (11, v2),
            (12, dangling),
        ]));
        let name = |oid, attnum| catalog.source(oid, attnum).map(|(t, c)| format!("{}.{c}", t.name));
        assert_eq!(name(11, 1).as_deref(), Some("public.customers.ssn"));
        assert_eq!(name(10, 2).as_deref(), Some("public.customers.ssn"));
        assert_eq!(name(11, 2).as_deref(), Some("public.v1.em"));
        assert_eq!(name(12, 1).as_deref(), Some("public.v3.z"));
        assert_eq!(name(1, 2), None);
        assert_eq!(name(1, 0), None);
        assert_eq!(name(1, -1), None);
        let sources = |t: &str, c: &str| catalog.sources_of(t, c);
        assert_eq!(sources("v2", "x"), [("public.customers".to_string(), "ssn".to_string())]);
        assert_eq!(sources("public.v2", "y"), [("public.v1".to_string(), "em".to_string())]);
        assert!(
            sources("v1", "em").is_empty() && sources("customers", "ssn").is_empty() && sources("v2", "q").is_empty()
        );
        assert_eq!(
            view_origins(
                "({QUERY :targetList ({TARGETENTRY :resno 3 :resorigtbl 1 :resorigcol 1 :resjunk false})})",
                2
            ),
            None
        );
    }

    #[test]
    fn a_name_means_its_table_in_every_schema_and_a_qualified_one_only_that_table() {
        let catalog = Catalog::from_tables(HashMap::from([
            (1, table("public.customers", &["id", "", "email"])),
            (2, table("audit.customers", &["at"])),
            (3, table("public.orders", &["id"])),
        ]));
        let mut all = catalog.columns_of("customers").unwrap();
        all.sort();
        assert_eq!(all, ["at", "email", "id"]);
        assert_eq!(catalog.columns_of("public.customers").unwrap(), ["id", "email"]);
        assert_eq!(catalog.columns_of("audit.customers").unwrap(), ["at"]);
        assert!(catalog.columns_of("ustomers").is_none() && catalog.columns_of("lic.customers").is_none());
        assert!(catalog.columns_of("other.customers").is_none());
        assert_eq!(catalog.qualified("public.orders").map(|t| t.columns.len()), Some(1));
        assert!(catalog.not_null_in_any("customers", "at") && !catalog.not_null_in_any("public.customers", "at"));
        catalog.columns_changed();
        assert!(catalog.columns_of("orders").is_none());
    }

    #[test]
    fn column_names_keep_commas_and_dropped_columns() {
        // "id", dropped, "a,b", "ssn"
        let list = format!("{},,{},{}", hex::encode("id"), hex::encode("a,b"), hex::encode("ssn"));
        assert_eq!(column_names(&list).unwrap(), ["id", "", "a,b", "ssn"]);
        assert_eq!(column_names("").unwrap(), [""]);
        assert!(column_names("zz").is_none());
        assert!(column_names(&hex::encode([0xff, 0xfe])).is_none());
    }
}

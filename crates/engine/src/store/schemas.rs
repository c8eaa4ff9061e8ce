//! The two stores' schemas, compared column by column against a real
//! PostgreSQL: their migrations are written twice, in two dialects.

use super::*;

/// One column as both schemas can state it: its table, name, the family
/// of its type and whether it may be null.
type Column = (String, String, &'static str, bool);

/// The family of a declared type: SQLite's affinity rules, PostgreSQL's
/// names (INTEGER and BIGINT both hold an i64 through sqlx's Any driver).
fn family(declared: &str) -> &'static str {
    let t = declared.to_ascii_lowercase();
    if t.contains("int") {
        "integer"
    } else if t.contains("char") || t.contains("text") || t.contains("clob") {
        "text"
    } else if t.contains("real") || t.contains("floa") || t.contains("doub") {
        "real"
    } else if t.contains("bool") {
        "boolean"
    } else if t.contains("blob") || t.contains("bytea") {
        "blob"
    } else {
        "other"
    }
}

async fn sqlite_columns(s: &Store) -> Vec<Column> {
    let rows = sqlx::query(
        "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&s.pool)
    .await
    .expect("sqlite columns");
    rows.iter()
        .map(|r| {
            let declared: String = r.get(2);
            // A primary key column is never null in PostgreSQL; SQLite
            // reports it nullable unless it says NOT NULL as well.
            let not_null = r.get::<i64, _>(3) != 0 || r.get::<i64, _>(4) != 0;
            (r.get(0), r.get(1), family(&declared), !not_null)
        })
        .collect()
}

async fn postgres_columns(s: &Store) -> Vec<Column> {
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&s.pool)
    .await
    .expect("postgres columns");
    rows.iter()
        .map(|r| {
            let declared: String = r.get(2);
            let nullable: String = r.get(3);
            (r.get(0), r.get(1), family(&declared), nullable == "YES")
        })
        .collect()
}

/// The two stores' migrations are written twice (their SQL dialects
/// differ): every table and column, its type family and nullability,
/// must be the same in both, or a feature works on one store only.
#[tokio::test]
async fn the_sqlite_and_postgresql_schemas_have_the_same_columns() {
    let server = spotkeeper_testkit::Postgres::start();
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    let pg = Store::connect(&url).await.expect("postgres");
    let lite = Store::memory().await.expect("sqlite");
    let mut a = sqlite_columns(&lite).await;
    let mut b = postgres_columns(&pg).await;
    a.sort();
    b.sort();
    assert!(a.len() > 40, "the schema was read: {a:?}");
    let only = |x: &[Column], y: &[Column]| -> Vec<String> {
        x.iter()
            .filter(|c| !y.contains(c))
            .map(|(t, c, ty, null)| {
                format!("{t}.{c} {ty}{}", if *null { " null" } else { " not null" })
            })
            .collect()
    };
    let (sqlite_only, postgres_only) = (only(&a, &b), only(&b, &a));
    assert!(
        sqlite_only.is_empty() && postgres_only.is_empty(),
        "the schemas differ\n  only in SQLite:     {sqlite_only:?}\n  only in PostgreSQL: {postgres_only:?}"
    );
}

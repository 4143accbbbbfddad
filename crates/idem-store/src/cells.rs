//! The cells the fleet runs (`idem.cells`): enqueue refuses any other (SQLSTATE IDM03) on
//! every surface. Migrations register the built-in cells; each worker registers its own
//! when it starts, so a declarative cell is accepted once a worker that runs it is up.
//! A worker also writes each cell's input schema (enqueue checks arguments against its top
//! level in SQL: SQLSTATE IDM05) and whether the partner has a lookup.

use sqlx::PgPool;

/// Register `names` (idempotent; refreshes `last_seen`).
pub async fn register(pool: &PgPool, names: &[String], by: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idem.cells (name, registered_by) SELECT unnest($1::text[]), $2 \
         ON CONFLICT (name) DO UPDATE SET last_seen = now()",
    )
    .bind(names)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every registered cell name, sorted.
pub async fn names(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM idem.cells ORDER BY name")
        .fetch_all(pool)
        .await
}

/// What a worker says about one of its cells.
#[derive(Debug, Clone, PartialEq)]
pub struct CellFacts {
    pub name: String,
    /// The JSON Schema of the arguments (top level checked in SQL at enqueue).
    pub input_schema: serde_json::Value,
    /// `none`, `strong` or `eventual`: whether reconciliation can ask the partner.
    pub lookup: &'static str,
}

/// The text form of a lookup, as `idem.cells.lookup` holds it.
pub fn lookup_kind(lookup: &idem_core::Lookup) -> &'static str {
    match lookup {
        idem_core::Lookup::None => "none",
        idem_core::Lookup::Strong => "strong",
        idem_core::Lookup::Eventual { .. } => "eventual",
    }
}

/// Register cells with their facts (idempotent; the latest worker's facts win, so a new
/// version's schema takes effect when its first worker starts).
pub async fn register_cells(
    pool: &PgPool,
    cells: &[CellFacts],
    by: &str,
) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
    let schemas: Vec<serde_json::Value> = cells.iter().map(|c| c.input_schema.clone()).collect();
    let lookups: Vec<&str> = cells.iter().map(|c| c.lookup).collect();
    sqlx::query(
        "INSERT INTO idem.cells (name, registered_by, input_schema, lookup) \
         SELECT * FROM unnest($1::text[], array_fill($2::text, ARRAY[cardinality($1::text[])]), \
                              $3::jsonb[], $4::text[]) \
         ON CONFLICT (name) DO UPDATE SET last_seen = now(), \
             input_schema = EXCLUDED.input_schema, lookup = EXCLUDED.lookup",
    )
    .bind(&names)
    .bind(by)
    .bind(&schemas)
    .bind(&lookups)
    .execute(pool)
    .await?;
    Ok(())
}

/// The registered lookup kind of a cell (`None` when no worker has said).
pub async fn lookup(pool: &PgPool, cell: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, Option<String>>("SELECT lookup FROM idem.cells WHERE name = $1")
            .bind(cell)
            .fetch_optional(pool)
            .await?
            .flatten(),
    )
}

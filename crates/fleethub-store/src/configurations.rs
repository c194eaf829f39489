//! Configurations (automatic device management) in SQLite: one row per configuration holding core's
//! `Configuration` as JSON. The per-twin bookkeeping (which configurations target a twin, which one is
//! applied and what it wrote) is not here: it lives in the twin document itself, so it is read, cached and
//! written with the twin (see `Store::assign_configurations`).
//!
//! The functions here run on a connection the caller chose (the writer's open transaction, or a reader);
//! `sqlite.rs` wires them into [`crate::Store`].

use fleethub_core::configuration::{Configuration, ConfigurationId, ConfigurationSpec};
use fleethub_protocol::ids::IfMatch;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use crate::{StoreError, StoreResult};

/// The schema of configurations (migration 4). Released: never edit it, append a new migration.
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE configurations (
        id TEXT PRIMARY KEY,
        configuration TEXT NOT NULL
    );
"#;

pub(crate) fn load(
    connection: &Connection,
    id: &ConfigurationId,
) -> StoreResult<Option<Configuration>> {
    let text: Option<String> = connection
        .prepare_cached("SELECT configuration FROM configurations WHERE id = ?1")?
        .query_row(params![id.as_str()], |row| row.get(0))
        .optional()?;
    Ok(text.map(|text| serde_json::from_str(&text)).transpose()?)
}

pub(crate) fn list(connection: &Connection, limit: usize) -> StoreResult<Vec<Configuration>> {
    let mut statement = connection
        .prepare_cached("SELECT configuration FROM configurations ORDER BY id LIMIT ?1")?;
    let rows = statement.query_map(params![limit.min(i64::MAX as usize) as i64], |row| {
        row.get::<_, String>(0)
    })?;
    let mut configurations = Vec::new();
    for row in rows {
        configurations.push(serde_json::from_str(&row?)?);
    }
    Ok(configurations)
}

fn save(connection: &Connection, configuration: &Configuration) -> StoreResult<()> {
    connection
        .prepare_cached(
            "INSERT INTO configurations (id, configuration) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET configuration = excluded.configuration",
        )?
        .execute(params![
            configuration.id.as_str(),
            serde_json::to_string(configuration)?
        ])?;
    Ok(())
}

pub(crate) fn insert(
    connection: &Connection,
    configuration: Configuration,
    max: usize,
) -> StoreResult<Configuration> {
    if load(connection, &configuration.id)?.is_some() {
        return Err(StoreError::ConfigurationAlreadyExists(configuration.id));
    }
    let count: i64 = connection
        .prepare_cached("SELECT COUNT(*) FROM configurations")?
        .query_row([], |row| row.get(0))?;
    if count as usize >= max {
        return Err(StoreError::TooManyConfigurations { max });
    }
    save(connection, &configuration)?;
    Ok(configuration)
}

pub(crate) fn update(
    connection: &Connection,
    id: &ConfigurationId,
    spec: ConfigurationSpec,
    if_match: &IfMatch,
    now: OffsetDateTime,
) -> StoreResult<Configuration> {
    let mut configuration =
        load(connection, id)?.ok_or_else(|| StoreError::ConfigurationNotFound(id.clone()))?;
    check_if_match(if_match, configuration.etag())?;
    configuration.update(spec, now)?;
    save(connection, &configuration)?;
    Ok(configuration)
}

pub(crate) fn delete(
    connection: &Connection,
    id: &ConfigurationId,
    if_match: &IfMatch,
) -> StoreResult<()> {
    let configuration =
        load(connection, id)?.ok_or_else(|| StoreError::ConfigurationNotFound(id.clone()))?;
    check_if_match(if_match, configuration.etag())?;
    connection
        .prepare_cached("DELETE FROM configurations WHERE id = ?1")?
        .execute(params![id.as_str()])?;
    Ok(())
}

fn check_if_match(if_match: &IfMatch, current: String) -> StoreResult<()> {
    match if_match {
        IfMatch::Any => Ok(()),
        IfMatch::Tag(given) if given.as_str() == current => Ok(()),
        IfMatch::Tag(given) => Err(StoreError::PreconditionFailed {
            given: given.as_str().to_owned(),
            current,
        }),
    }
}

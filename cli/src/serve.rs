//! Starting the leaderboard web page (design §11) for `rankmysteps run` and `rankmysteps serve`.

use std::path::Path;
use std::sync::Arc;

use rankmysteps_web::{CassandraStore, LocalStore, Server, WebError};

use crate::config::ClusterConfig;
use crate::error::CliError;

/// Serves the local output directory `out` on `listen`, and with `introspection` the embedded
/// job's `/debug/` routes beside the page. With `fallback`, a taken port is not an error: the
/// page is served on a free port of the same host instead (the default generator run, so that
/// a second `rankmysteps run` still starts).
pub fn local(
    out: &Path,
    listen: &str,
    fallback: bool,
    introspection: Option<Arc<crate::introspect::Introspection>>,
) -> Result<Server, CliError> {
    let listener = match rankmysteps_web::bind(listen) {
        Ok(l) => l,
        Err(WebError::AddrInUse { .. }) if fallback => {
            let host = listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            eprintln!("rankmysteps: {listen} is already in use; serving the leaderboard on a free port instead");
            rankmysteps_web::bind(&format!("{host}:0"))?
        }
        Err(e) => return Err(e.into()),
    };
    let store = Arc::new(LocalStore::new(out));
    Ok(match introspection {
        Some(i) => Server::start_with_routes(store, listener, crate::introspect::routes(i))?,
        None => Server::start(store, listener)?,
    })
}

/// Serves the Cassandra tables of `config`'s `[cassandra]` on `listen`, following the progress
/// record of the workers' job (their `[kafka]` topic, `steps` without one). Cassandra may be
/// down: the API answers 503 until it is reachable.
pub fn cassandra(config: &ClusterConfig, listen: &str) -> Result<Server, CliError> {
    let c = config
        .cassandra
        .clone()
        .ok_or_else(|| CliError::Setting("serve needs a [cassandra] section".into()))?;
    let topic = config.kafka.as_ref().map_or("steps", |k| k.topic.as_str());
    let job = crate::recovery::progress_job(topic);
    let listener = rankmysteps_web::bind(listen)?;
    Ok(Server::start(
        Arc::new(CassandraStore::new(c, job)),
        listener,
    )?)
}

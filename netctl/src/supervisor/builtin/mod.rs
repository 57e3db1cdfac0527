//! The built-in programs: how each kind is started (netctl's own services through
//! `netctl serve`, and the Debian programs with the configuration netctl generates), and
//! what has to exist before it starts (data directories, PostgreSQL's cluster and
//! password, nginx's configuration).

pub mod nginx;
pub mod postgres;
pub mod redis;

use std::path::{Path, PathBuf};

use anyhow::bail;
use nix::sys::signal::Signal;

use super::spec::{ProcessSpec, Secret, set};
// The shop's programs are configured from the contract, not the shop: netctl built without
// the shop (feature `shop` off) sets the same variables, and the names live once.
use netctl_shop_contract::env as service_env;

use crate::{
    instance::paths,
    topology::{Endpoint, Kind, Plan},
};

/// Fills in how `kind` runs on endpoint `e`.
pub fn configure(
    spec: &mut ProcessSpec,
    kind: Kind,
    plan: &Plan,
    e: &Endpoint,
    instance: &str,
    exe: &str,
) {
    let port = e.port().unwrap_or(kind.default_port());
    match kind {
        Kind::Registry | Kind::Gateway | Kind::Product | Kind::Order => {
            spec.argv = vec![exe.to_string(), "serve".into(), kind.as_str().into()];
            let env = &mut spec.env;
            set(env, service_env::LISTEN, &format!("{}:{port}", e.address));
            set(env, service_env::INSTANCE_ID, &e.name);
            set(env, service_env::SERVICE_NAME, &e.service);
            set(env, "RUST_LOG", "info");
            if kind != Kind::Registry
                && let Some(r) = plan.endpoints_of_kind(Kind::Registry).first()
            {
                let rport = r.port().unwrap_or(Kind::Registry.default_port());
                set(
                    env,
                    service_env::REGISTRY_URL,
                    &format!("http://{}:{rport}", r.address),
                );
            }
            if kind == Kind::Gateway {
                let edges: Vec<String> = plan
                    .endpoints_of_kind(Kind::Nginx)
                    .iter()
                    .map(|e| e.address.to_string())
                    .collect();
                set(env, service_env::TRUSTED_PROXIES, &edges.join(","));
            }
            if kind == Kind::Product
                && let Some(r) = plan.endpoints_of_kind(Kind::Redis).first()
            {
                let rport = r.port().unwrap_or(Kind::Redis.default_port());
                set(
                    env,
                    service_env::REDIS_URL,
                    &format!("redis://{}:{rport}", r.address),
                );
            }
            if matches!(kind, Kind::Product | Kind::Order)
                && let Some(pg) = plan.endpoints_of_kind(Kind::Postgres).first()
            {
                spec.secret_env.push((
                    service_env::DATABASE_URL.to_string(),
                    Secret::DatabaseUrl {
                        name: pg.name.clone(),
                        address: pg.address,
                        port: pg.port().unwrap_or(Kind::Postgres.default_port()),
                    },
                ));
            }
            spec.url = Some(format!("http://{}:{port}", e.address));
        }
        Kind::Redis => redis::configure(spec, e, port, instance),
        Kind::Postgres => postgres::configure(spec, e, port, instance),
        Kind::Nginx => nginx::configure(spec, plan, e, port, instance),
    }
}

/// Gets everything the process of `spec` needs on disk ready (blocking: initdb takes a
/// second or two). Idempotent.
pub fn prepare(spec: &ProcessSpec, instance: &str) -> anyhow::Result<()> {
    let program = spec.argv.first().map(String::as_str).unwrap_or_default();
    if resolve(program).is_none() {
        let hint = match spec.kind {
            Some(Kind::Redis) => " (install redis-server: cargo xtask setup)",
            Some(Kind::Postgres) => " (install postgresql: cargo xtask setup)",
            Some(Kind::Nginx) => " (install nginx-light: cargo xtask setup)",
            _ => "",
        };
        bail!("{program:?} is not an executable program{hint}");
    }
    // Clients of PostgreSQL may start first: whoever comes first makes the password.
    for (_, secret) in &spec.secret_env {
        let Secret::DatabaseUrl { name, .. } = secret;
        postgres::ensure_password(instance, name)?;
    }
    match spec.kind {
        Some(Kind::Postgres) => postgres::prepare(spec, instance),
        Some(Kind::Redis) => redis::prepare(spec, instance),
        Some(Kind::Nginx) => nginx::prepare(spec, instance),
        _ => Ok(()),
    }
}

/// Resolves secret environment values.
pub fn secrets(spec: &ProcessSpec, instance: &str) -> anyhow::Result<Vec<(String, String)>> {
    spec.secret_env
        .iter()
        .map(|(k, s)| match s {
            Secret::DatabaseUrl {
                name,
                address,
                port,
            } => {
                let password = postgres::password(instance, name)?;
                Ok((
                    k.clone(),
                    format!(
                        "postgresql://{}:{password}@{address}:{port}/{}",
                        postgres::APP_ROLE,
                        postgres::APP_DATABASE
                    ),
                ))
            }
        })
        .collect()
}

/// A program by path, or looked up in PATH (like the child's exec will).
pub fn resolve(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    super::spec::BASE_ENV[0]
        .1
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
}

/// A signal to stop `kind` cleanly.
pub fn stop_signal(kind: Kind) -> Signal {
    match kind {
        // Fast shutdown: SIGTERM would wait for every client to disconnect.
        Kind::Postgres => Signal::SIGINT,
        // Graceful: finish the requests in flight.
        Kind::Nginx => Signal::SIGQUIT,
        _ => Signal::SIGTERM,
    }
}

/// Creates `dir` owned by `user` with `mode`.
pub fn own_dir(dir: &Path, user: &nix::unistd::User, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    nix::unistd::chown(dir, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {} to {}", dir.display(), user.name))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// The account a program runs as; the hint says which package creates it.
pub fn user(name: &str, package: &str) -> anyhow::Result<nix::unistd::User> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "there is no user {name:?} (it comes with the {package} package: cargo xtask setup)"
            )
        })
}

/// `/var/lib/netctl/<instance>`, traversable by the data stores' users.
pub fn volume_root(instance: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;

    use anyhow::Context;
    let dir = paths::volumes(instance);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for d in [Path::new(paths::VOLUME_ROOT), dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", d.display()))?;
    }
    Ok(dir)
}

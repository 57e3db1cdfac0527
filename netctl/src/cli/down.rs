//! `netctl down [--volumes]`

use std::process::ExitCode;

use super::resolve_instance;
use crate::{
    instance::paths,
    output,
    reconcile::{
        down::{self, DownReport},
        preflight,
    },
    topology::plan::instance_name,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also remove the platform's data (PostgreSQL's database, generated passwords) under
    /// /var/lib/netctl/<instance>.
    #[arg(long)]
    volumes: bool,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("down")?;
    let resolved = resolve_instance(prefix)?;
    match &resolved {
        None => output::print_line("nothing is up")?,
        Some(instance) => match down::down(instance).await? {
            DownReport::NothingUp => output::print_line(&format!("{instance}: nothing is up"))?,
            DownReport::Removed(removed) => output::print_line(&format!(
                "{instance}: down ({} resources removed)",
                removed.len()
            ))?,
        },
    }
    if args.volumes {
        remove_volumes(&volumes_of(resolved))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whose data `--volumes` removes: the instance acted on, or, when nothing is up and no
/// `--prefix` says otherwise, the default platform's (`down` then `down --volumes` must
/// still remove it).
fn volumes_of(resolved: Option<String>) -> String {
    resolved.unwrap_or_else(|| instance_name(&crate::topology::default_prefix()))
}

fn remove_volumes(instance: &str) -> anyhow::Result<()> {
    let dir = paths::volumes(instance);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => output::print_line(&format!("{instance}: removed {}", dir.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("removing {}", dir.display())));
        }
    }
    // The parent goes too when no instance has data left.
    let _ = std::fs::remove_dir(paths::VOLUME_ROOT);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_of_the_default_platform_go_even_when_nothing_is_up() {
        assert_eq!(volumes_of(None), "nc");
        assert_eq!(volumes_of(Some("t07".into())), "t07");
    }
}

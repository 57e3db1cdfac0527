//! `netctl down [--volumes]`

use std::process::ExitCode;

use super::resolve_instance;
use crate::{
    controller::{
        down::{self, DownReport},
        preflight,
    },
    output, supervisor,
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
    let Some(instance) = resolve_instance(prefix)? else {
        output::print_line("nothing is up")?;
        return Ok(ExitCode::SUCCESS);
    };
    match down::down(&instance).await? {
        DownReport::NothingUp => output::print_line(&format!("{instance}: nothing is up"))?,
        DownReport::Removed(removed) => output::print_line(&format!(
            "{instance}: down ({} resources removed)",
            removed.len()
        ))?,
    }
    if args.volumes {
        let dir = supervisor::paths::volumes(&instance);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => output::print_line(&format!("{instance}: removed {}", dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("removing {}", dir.display())));
            }
        }
        // The parent goes too when no instance has data left.
        let _ = std::fs::remove_dir(supervisor::paths::VOLUME_ROOT);
    }
    Ok(ExitCode::SUCCESS)
}

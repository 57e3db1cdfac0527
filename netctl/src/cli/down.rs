//! `netctl down`

use std::process::ExitCode;

use super::resolve_instance;
use crate::{
    controller::{
        down::{self, DownReport},
        preflight,
    },
    output,
};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}

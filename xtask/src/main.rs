//! Project automation: `cargo xtask <command>` (`cargo xtask help` lists them). This file parses
//! the command line (declared in `flags.rs`) and hands it to the command's module.

mod bench;
mod brokers;
mod cluster;
mod conformance;
mod flags;
mod groups;
mod interop;
mod load;
mod peers;
mod report;
mod scale_out;
mod test;
mod util;

use std::ffi::OsString;
use std::process::ExitCode;

use flags::XtaskCmd;

fn main() -> ExitCode {
    let args = normalize(std::env::args_os().skip(1));
    let command_help = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(flags::Xtask::help_for);
    let flags = match flags::Xtask::from_vec(args) {
        Ok(flags) => flags,
        Err(e) if e.is_help() => {
            println!("{}", command_help.unwrap_or(flags::Xtask::HELP));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let usage = command_help.map_or_else(flags::Xtask::usage, str::to_owned);
            eprintln!("xtask: {e}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    let result = match flags.subcommand {
        XtaskCmd::Test(cmd) => cmd.run(),
        XtaskCmd::Brokers(cmd) => cmd.run(),
        XtaskCmd::Report(cmd) => cmd.run(),
        XtaskCmd::Conformance(cmd) => cmd.run(),
        XtaskCmd::Load(cmd) => cmd.run(),
        XtaskCmd::Bench(cmd) => cmd.run(),
        XtaskCmd::Groups(cmd) => cmd.run(),
        XtaskCmd::ScaleOut(cmd) => cmd.run(),
        XtaskCmd::Cluster(cmd) => cmd.run(),
        XtaskCmd::Interop(cmd) => cmd.run(),
        XtaskCmd::Peers(cmd) => cmd.run(),
        XtaskCmd::Cost(cmd) => cmd.run(),
        XtaskCmd::Help(_) => {
            println!("{}", flags::Xtask::HELP);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The arguments in the form xflags takes. Two spellings worked before flags were typed and
/// stay valid: `--` anywhere (`cargo xtask report -- --aggregates 100`; xflags would make
/// the rest positional) and `--flag=value` (`--transport=nats`; xflags takes a value only as
/// the next argument).
fn normalize(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    for arg in args {
        let split = arg
            .to_str()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split_once('='));
        match split {
            Some(_) if arg == "--" => {}
            Some(Some((flag, value))) => out.extend([flag.into(), value.into()]),
            _ => out.push(arg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> xflags::Result<flags::Xtask> {
        flags::Xtask::from_vec(normalize(line.split_whitespace().map(OsString::from)))
    }

    /// The spellings that the README, DEVELOPERS.md, .ci/run and the programs' own messages
    /// tell people to type, and the ones that worked before flags were typed.
    #[test]
    fn known_command_lines_parse() {
        for line in [
            "test",
            "brokers",
            "brokers install",
            "brokers up",
            "brokers up kafka",
            "brokers down nats kafka",
            "brokers status",
            "report",
            "report -- --aggregates 100 --versions 20 --rounds 3",
            "conformance --transport all --quick",
            "conformance --transport nats --stress 4 --timeout 30",
            "load",
            "load --transport kafka --level low,medium",
            "load --transport=nats --levels=all",
            "bench --report --quick --rounds 3 --no-nats --no-kafka",
            "bench --criterion",
            "cost --no-callgrind --profile",
            "groups --quick --rounds 2",
            "scale-out",
            "scale-out --transport kafka --only throughput --messages 20000",
            "cluster",
            "interop",
            "peers --rounds 1",
            "cluster --transport nats --messages 5000",
            "help",
        ] {
            if let Err(e) = parse(line) {
                panic!("`cargo xtask {line}`: {e}");
            }
        }
    }

    #[test]
    fn unknown_words_fail() {
        for line in [
            "",
            "tests",
            "test --quick",
            "brokers start",
            "brokers up redis",
            "conformance --transport mem",
            "conformance --stress",
            "bench --rounds many",
            "cost --profile --profile",
            "scale-out --only leave",
            "cluster --transport memory --messages",
        ] {
            let result = parse(line);
            assert!(
                result.as_ref().is_err_and(|e| !e.is_help()),
                "`cargo xtask {line}`: {result:?}"
            );
        }
    }

    #[test]
    fn every_command_has_help() {
        for command in flags::Xtask::HELP
            .lines()
            .filter_map(|l| l.strip_prefix("xtask "))
        {
            let help = flags::Xtask::help_for(command).unwrap();
            assert!(help.starts_with(&format!("xtask {command}\n")), "{help}");
            assert!(!help.contains("\nxtask "), "{help}");
        }
        assert!(flags::Xtask::usage().contains("test | brokers | report"));
    }
}

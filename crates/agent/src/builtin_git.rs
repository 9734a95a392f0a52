//! Sources without a git CLI: fetch and checkout with gitoxide, built into the binary, so
//! jobs in images without git still get their sources. The credentials are set in memory
//! only (`http.extraHeader`), never written to `.git/config`.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::remote::Direction;
use gix::remote::fetch::{Shallow, Tags};

use crate::sources::SourcesPlan;

/// Fetches the plan's refspecs into `project_dir` and checks out its commit, writing
/// progress lines with `log`. The work tree is made to match the commit exactly (like
/// `git checkout -f` followed by `git clean -ffdx`).
pub fn fetch_and_checkout(
    plan: &SourcesPlan,
    project_dir: &Path,
    tls: rustls::ClientConfig,
    log: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    std::fs::create_dir_all(project_dir).map_err(|e| format!("{}: {e}", project_dir.display()))?;
    let fresh = !project_dir.join(".git").exists();
    let mut repo = if fresh {
        gix::init(project_dir)
    } else {
        gix::open(project_dir)
    }
    .map_err(|e| text(&e))?;
    log(if fresh {
        "Created fresh repository."
    } else {
        "Reinitialized existing Git repository."
    });
    {
        let mut config = repo.config_snapshot_mut();
        config
            .set_value(
                &gix::config::tree::Http::EXTRA_HEADER,
                format!("Authorization: {}", plan.authorization).as_str(),
            )
            .map_err(|e| text(&e))?;
        // Reflogs need a committer; an image may have no user database to derive one from.
        config
            .set_value(&gix::config::tree::Committer::NAME, "podrunner")
            .map_err(|e| text(&e))?;
        config
            .set_value(&gix::config::tree::Committer::EMAIL, "podrunner@localhost")
            .map_err(|e| text(&e))?;
        config.commit().map_err(|e| text(&e))?;
    }
    let shallow = match NonZeroU32::new(u32::try_from(plan.depth).unwrap_or(0)) {
        Some(depth) => Shallow::DepthAtRemote(depth),
        None if repo.is_shallow().unwrap_or(false) => Shallow::undo(),
        None => Shallow::NoChange,
    };
    let remote = repo
        .remote_at(plan.remote.as_str())
        .map_err(|e| text(&e))?
        .with_refspecs(plan.refspecs.iter().map(String::as_str), Direction::Fetch)
        .map_err(|e| text(&e))?
        .with_fetch_tags(Tags::None);
    let interrupt = AtomicBool::new(false);
    // gix's own HTTP client would insist on the system's CA store, which an image may lack:
    // give it the TLS configuration podrunner uses everywhere else.
    let mut http_options = repo
        .transport_options(plan.remote.as_str(), None)
        .map_err(|e| chain(&e))?
        .and_then(|options| {
            options
                .downcast::<gix::protocol::transport::client::blocking_io::http::Options>()
                .ok()
        })
        .map(|options| *options)
        .unwrap_or_default();
    http_options.backend = Some(std::sync::Arc::new(std::sync::Mutex::new(
        gix::protocol::transport::client::blocking_io::http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                Ok(builder.tls_backend_preconfigured(tls.clone()))
            })),
            configure_request: None,
        },
    )));
    remote
        .connect(Direction::Fetch)
        .map_err(|e| format!("cannot reach {}: {}", plan.remote, chain(&e)))?
        .with_transport_options(Box::new(http_options))
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| format!("fetching failed: {}", chain(&e)))?
        .with_shallow(shallow)
        .receive(gix::progress::Discard, &interrupt)
        .map_err(|e| format!("fetching failed: {}", chain(&e)))?;
    if !plan.checkout {
        log("Skipping Git checkout");
        return Ok(());
    }
    let id = gix::ObjectId::from_hex(plan.sha.as_bytes())
        .map_err(|e| format!("{:?} is not a commit ID: {e}", plan.sha))?;
    log(&format!(
        "Checking out {} as detached HEAD (ref is {})...",
        plan.sha.get(..8).unwrap_or(&plan.sha),
        plan.git_ref
    ));
    let tree = repo
        .find_commit(id)
        .map_err(|e| format!("the commit {} was not fetched: {e}", plan.sha))?
        .tree_id()
        .map_err(|e| text(&e))?;
    for entry in std::fs::read_dir(project_dir)
        .map_err(|e| format!("{}: {e}", project_dir.display()))?
        .flatten()
    {
        if entry.file_name() != ".git" {
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let mut index = repo.index_from_tree(&tree).map_err(|e| text(&e))?;
    let mut options = repo
        .checkout_options(gix::worktree::stack::state::attributes::Source::IdMapping)
        .map_err(|e| text(&e))?;
    options.destination_is_initially_empty = true;
    let objects = repo.objects.clone().into_arc().map_err(|e| text(&e))?;
    gix::worktree::state::checkout(
        &mut index,
        project_dir,
        objects,
        &gix::progress::Discard,
        &gix::progress::Discard,
        &interrupt,
        options,
    )
    .map_err(|e| format!("checkout failed: {e}"))?;
    index.write(Default::default()).map_err(|e| text(&e))?;
    repo.edit_reference(RefEdit {
        change: Change::Update {
            log: LogChange {
                mode: RefLog::AndReference,
                force_create_reflog: false,
                message: format!("checkout: moving to {}", plan.sha).into(),
            },
            expected: PreviousValue::Any,
            new: gix::refs::Target::Object(id),
        },
        name: "HEAD".try_into().map_err(|e| format!("{e}"))?,
        deref: false,
    })
    .map_err(|e| text(&e))?;
    Ok(())
}

/// An error with all its causes, `: `-separated.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

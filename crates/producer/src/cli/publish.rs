//! `courier-producer publish`: one event from the command line, a file or
//! stdin. The event is fully built and encoded before connecting, so bad
//! input never reaches the broker and never needs one to be diagnosed. The
//! data is checked but kept as the text given, so receivers get its bytes.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use clap::{ArgGroup, Args};
use courier_model::{
    Channel, Event, EventData, EventError, EventId, EventType, MAX_EVENT_BYTES, WorkspaceId,
};

use super::{Broker, Failure, parse_channel};

/// Reading stops here: far above any acceptable event (pretty-printed JSON
/// may shrink a lot once compacted) yet small enough that `--file
/// /dev/zero` cannot exhaust memory.
const MAX_INPUT_BYTES: u64 = 64 * MAX_EVENT_BYTES as u64;

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("source")
        .required(true)
        .multiple(false)
        .args(["data", "file", "stdin"])
))]
pub struct PublishArgs {
    /// Workspace (tenant) the event belongs to.
    #[arg(long, value_name = "W")]
    pub workspace: WorkspaceId,

    /// Event type, such as order.created or ORDER_CREATED; an unknown type lists the known ones.
    #[arg(long = "type", value_name = "T")]
    pub event_type: EventType,

    /// Order channel the event came from (amazon, shopify, ...); subscriptions may filter on it.
    #[arg(long, value_name = "C", value_parser = parse_channel)]
    pub channel: Option<Channel>,

    /// Event id to use instead of a generated `evt_...` one; republishing an id is deduplicated downstream.
    #[arg(long, value_name = "ID")]
    pub id: Option<EventId>,

    /// The event's data: a JSON object.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,

    /// Read the event's data (a JSON object) from this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// `-`: read the event's data (a JSON object) from stdin.
    #[arg(value_name = "-", value_parser = clap::builder::PossibleValuesParser::new(["-"]))]
    pub stdin: Option<String>,
}

/// Where the data came from, so that errors can say which input is wrong.
#[derive(Debug)]
enum Source<'a> {
    Inline(&'a str),
    File(&'a PathBuf),
    Stdin,
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Inline(_) => f.write_str("--data"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Stdin => f.write_str("stdin"),
        }
    }
}

impl PublishArgs {
    fn source(&self) -> Source<'_> {
        // clap's group guarantees exactly one of the three.
        match (&self.data, &self.file) {
            (Some(data), _) => Source::Inline(data),
            (None, Some(path)) => Source::File(path),
            (None, None) => Source::Stdin,
        }
    }
}

pub async fn run(broker: &Broker, args: &PublishArgs) -> Result<(), Failure> {
    let source = args.source();
    let bytes = read(&source)?;
    let (event, body) = build(args, &source, bytes)?;

    let publisher = super::connect(broker).await?;
    let published = publisher.publish_encoded(&event, &body).await;
    super::close(publisher).await;
    published.map_err(Failure::from_publish)?;

    println!("{}", event.id);
    Ok(())
}

fn read(source: &Source<'_>) -> Result<Vec<u8>, Failure> {
    let reader: Box<dyn Read> = match source {
        Source::Inline(data) => return Ok(data.as_bytes().to_vec()),
        Source::File(path) => Box::new(
            std::fs::File::open(path)
                .map_err(|error| Failure::bad_input(format!("cannot open {source}: {error}")))?,
        ),
        Source::Stdin => Box::new(std::io::stdin().lock()),
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Failure::bad_input(format!("cannot read {source}: {error}")))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(Failure::bad_input(format!(
            "{source} holds more than {MAX_INPUT_BYTES} bytes; an event may be at most {MAX_EVENT_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Builds and encodes the event exactly as it will be sent, so every check
/// the broker path would make has been made.
fn build(
    args: &PublishArgs,
    source: &Source<'_>,
    bytes: Vec<u8>,
) -> Result<(Event, Vec<u8>), Failure> {
    let text = String::from_utf8(bytes).map_err(|error| {
        Failure::bad_input(format!(
            "malformed JSON in {source}: not UTF-8 text ({error})"
        ))
    })?;
    let kind = kind(&text);
    let data = EventData::parse(text).map_err(|error| match error {
        EventError::DataMalformed(error) => {
            Failure::bad_input(format!("malformed JSON in {source}: {error}"))
        }
        EventError::DataNotObject => Failure::bad_input(format!(
            "the data in {source} must be a JSON object ({{...}}), not {kind}"
        )),
        other => Failure::bad_input(format!("{source}: {other}")),
    })?;
    let mut event = Event::with_data(
        args.workspace.clone(),
        args.event_type,
        args.channel.clone(),
        data,
    )
    .map_err(|error| Failure::bad_input(format!("{source}: {error}")))?;
    if let Some(id) = &args.id {
        event.id = id.clone();
    }
    let body = event.to_vec().map_err(|error| {
        Failure::bad_input(format!(
            "the event built from {source} is too large: {error}"
        ))
    })?;
    Ok((event, body))
}

/// What a JSON text holds, told by its first character, for saying what was
/// given instead of an object. Only read once the text failed as an object.
fn kind(text: &str) -> &'static str {
    match text.trim_start().bytes().next() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: PublishArgs,
    }

    fn parse(argv: &[&str]) -> Result<PublishArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("publish").chain(argv.iter().copied()))
            .map(|w| w.args)
    }

    fn build_from(argv: &[&str]) -> Result<(Event, Vec<u8>), Failure> {
        let args = parse(argv).unwrap();
        let source = args.source();
        let bytes = read(&source)?;
        build(&args, &source, bytes)
    }

    fn message(failure: Failure) -> String {
        assert_eq!(failure.exit_code(), 2);
        format!("{:#}", failure.error())
    }

    #[test]
    fn builds_the_event_that_will_be_sent() {
        let (event, body) = build_from(&[
            "--workspace",
            "acme",
            "--type",
            "ORDER_CREATED",
            "--channel",
            "amazon",
            "--id",
            "evt_1",
            "--data",
            r#"{"order_id": "o1"}"#,
        ])
        .unwrap();
        assert_eq!(event.id.as_str(), "evt_1");
        assert_eq!(event.event_type, EventType::OrderCreated);
        assert_eq!(Event::from_slice(&body).unwrap(), event);
    }

    #[test]
    fn exactly_one_data_source() {
        let base = ["--workspace", "w", "--type", "order.created"];
        assert!(parse(&base).is_err());
        let two = [&base[..], &["--data", "{}", "-"]].concat();
        assert!(parse(&two).is_err());
        let stdin = [&base[..], &["-"]].concat();
        assert!(matches!(parse(&stdin).unwrap().source(), Source::Stdin));
    }

    #[test]
    fn bad_data_is_refused_with_its_source_named() {
        let base = ["--workspace", "w", "--type", "order.created", "--data"];
        let err = message(build_from(&[&base[..], &["{\"a\": }"]].concat()).unwrap_err());
        assert!(err.contains("malformed JSON in --data"), "{err}");
        assert!(err.contains("line 1 column 7"), "{err}");

        let err = message(build_from(&[&base[..], &["[1, 2]"]].concat()).unwrap_err());
        assert!(err.contains("must be a JSON object"), "{err}");
        assert!(err.contains("an array"), "{err}");

        let huge = format!(r#"{{"blob": "{}"}}"#, "x".repeat(MAX_EVENT_BYTES));
        let err = message(build_from(&[&base[..], &[huge.as_str()]].concat()).unwrap_err());
        assert!(err.contains("too large"), "{err}");

        let depth = courier_model::MAX_DATA_DEPTH + 1;
        let deep = format!(
            "{}{}",
            r#"{"a":"#.repeat(depth - 1) + "{}",
            "}".repeat(depth - 1)
        );
        let err = message(build_from(&[&base[..], &[deep.as_str()]].concat()).unwrap_err());
        assert!(err.starts_with("--data: "), "{err}");
        assert!(
            err.contains("`data` nests") && err.contains("at most 63"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        let err = parse(&["--workspace", "w", "--type", "order.nope", "--data", "{}"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("order.nope") && err.contains("order.created"),
            "{err}"
        );
        let err = parse(&[
            "--workspace",
            "a b",
            "--type",
            "order.created",
            "--data",
            "{}",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("workspace id"), "{err}");
    }
}

//! Errors of the XML parser and writer.

/// What went wrong reading or writing a thin_dump XML document. `line` is the 1-based line on
/// which the offending element ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document is not well-formed XML, or could not be read.
    #[error("Malformed XML at line {line}")]
    Xml {
        /// Line of the error.
        line: u64,
        /// What the XML reader reported.
        #[source]
        source: quick_xml::Error,
    },
    /// An attribute list could not be parsed (e.g. a duplicated attribute).
    #[error("Bad attribute list in <{element}> at line {line}")]
    AttributeSyntax {
        /// Line of the element.
        line: u64,
        /// The element's name.
        element: String,
        /// What the XML reader reported.
        #[source]
        source: quick_xml::events::attributes::AttrError,
    },
    /// One element (or the text between two) is longer than the parser accepts.
    #[error("Element at line {line} is longer than {limit} bytes")]
    ElementTooLong {
        /// Line at which the limit was reached.
        line: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// An element that is not part of the format.
    #[error("Unknown element <{element}> at line {line}")]
    UnknownElement {
        /// Line of the element.
        line: u64,
        /// The element's name.
        element: String,
    },
    /// A known element in a place where the format does not allow it.
    #[error("Element <{element}> at line {line} is not allowed {place}")]
    MisplacedElement {
        /// Line of the element.
        line: u64,
        /// The element's name (with a leading `/` for a closing tag).
        element: String,
        /// Where it was found, e.g. "outside <superblock>".
        place: &'static str,
    },
    /// A required attribute is absent.
    #[error("Missing attribute {attribute} in <{element}> at line {line}")]
    MissingAttribute {
        /// Line of the element.
        line: u64,
        /// The element's name.
        element: &'static str,
        /// The attribute's name.
        attribute: &'static str,
    },
    /// An attribute the element does not have.
    #[error("Unknown attribute {attribute} in <{element}> at line {line}")]
    UnknownAttribute {
        /// Line of the element.
        line: u64,
        /// The element's name.
        element: &'static str,
        /// The attribute's name as found.
        attribute: String,
    },
    /// An attribute that should be an unsigned number is not one, or does not fit its field.
    #[error(
        "Attribute {attribute}=\"{value}\" in <{element}> at line {line} is not a valid number"
    )]
    BadNumber {
        /// Line of the element.
        line: u64,
        /// The element's name.
        element: &'static str,
        /// The attribute's name.
        attribute: &'static str,
        /// The value as found.
        value: String,
    },
    /// A mapping run of length 0, or one whose thin or data blocks run past 2^64.
    #[error(
        "Mapping of {length} blocks from thin block {origin_begin} to data block {data_begin} at line {line} is empty or overflows"
    )]
    BadRun {
        /// Line of the element (0 when writing).
        line: u64,
        /// First thin block.
        origin_begin: u64,
        /// First data block.
        data_begin: u64,
        /// Number of blocks.
        length: u64,
    },
    /// Two mappings of one device (or one def) cover the same thin block.
    #[error("In {owner}, the mapping at thin block {second} overlaps the one starting at {first}")]
    OverlappingMappings {
        /// "device N" or "def \"NAME\"".
        owner: String,
        /// Start of the earlier run.
        first: u64,
        /// Start of the run that overlaps it.
        second: u64,
    },
    /// The writer was given a device whose runs are not sorted by thin block.
    #[error("In {owner}, the mapping at thin block {second} comes after the one at {first}")]
    UnsortedMappings {
        /// "device N".
        owner: String,
        /// Start of the earlier run in the list.
        first: u64,
        /// Start of the later run, which is lower.
        second: u64,
    },
    /// The dump holds more mapping runs than the parser accepts (counting expanded refs).
    #[error("More than {limit} mappings by line {line}")]
    TooManyMappings {
        /// Line of the element that went past the limit.
        line: u64,
        /// The limit.
        limit: usize,
    },
    /// Two devices with the same id.
    #[error("Device {dev_id} at line {line} appears twice")]
    DuplicateDevice {
        /// Line of the second device.
        line: u64,
        /// The repeated id.
        dev_id: u32,
    },
    /// Two `<def>` elements with the same name.
    #[error("Def \"{name}\" at line {line} appears twice")]
    DuplicateDef {
        /// Line of the second def.
        line: u64,
        /// The repeated name.
        name: String,
    },
    /// A `<ref>` to a def that was not defined before it.
    #[error("Ref to unknown def \"{name}\" at line {line}")]
    UnknownRef {
        /// Line of the ref.
        line: u64,
        /// The name referred to.
        name: String,
    },
    /// The document ended before `</superblock>` (or had no superblock at all).
    #[error("Document ends at line {line} before </superblock>")]
    Incomplete {
        /// Last line of the document.
        line: u64,
    },
    /// Writing the document failed.
    #[error("Cannot write the XML document")]
    Write(#[source] std::io::Error),
}

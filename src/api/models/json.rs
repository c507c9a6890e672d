//! JSON types of our own, stricter than poem-openapi's: a string that is only a string, and
//! a batch item checked item by item.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchemaRef, Registry},
    types::{ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;

use super::CreateCallRequest;

/// A JSON string and nothing else: poem-openapi's `String` also takes a number or a
/// boolean and stores its text (`"scriptId": 42` as `"42"`), which hides a client's bug.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text)),
            other => Err(poem_openapi::types::ParseError::expected_type(
                other.unwrap_or_default(),
            )),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// One item of a batch: a [`CreateCallRequest`] that is checked item by item, so that a bad
/// item is reported by its index instead of failing the whole body.
#[derive(Clone, Debug)]
pub struct BatchItem(pub Value);

impl Type for BatchItem {
    const IS_REQUIRED: bool = true;
    type RawValueType = Value;
    type RawElementValueType = Value;

    fn name() -> Cow<'static, str> {
        CreateCallRequest::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        CreateCallRequest::schema_ref()
    }

    fn register(registry: &mut Registry) {
        CreateCallRequest::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Value> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for BatchItem {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        Ok(Self(value.unwrap_or_default()))
    }
}

impl ToJSON for BatchItem {
    fn to_json(&self) -> Option<Value> {
        Some(self.0.clone())
    }
}

//! A small serde `Deserializer` over matched path parameters, behind the
//! [`Path`](crate::Path) extractor.
//!
//! It accepts one value (`Path<u32>`), a tuple in route order
//! (`Path<(String, u32)>`), or a struct / map keyed by parameter name. Values
//! are strings on the wire and parsed on demand, so a failure names the
//! parameter and the expected type.

use serde::de::{self, value::MapDeserializer, DeserializeSeed, IntoDeserializer, Visitor};

/// A path-parameter deserialization failure.
#[derive(Debug)]
pub(crate) struct PathError(pub(crate) String);

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PathError {}

impl de::Error for PathError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        PathError(msg.to_string())
    }
}

pub(crate) struct PathDeserializer<'a> {
    pub(crate) params: &'a [(String, String)],
}

/// One parameter's value, parsed when serde asks for a type.
pub(crate) struct ValueDeserializer<'a> {
    name: &'a str,
    value: &'a str,
}

impl<'a> IntoDeserializer<'a, PathError> for ValueDeserializer<'a> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parse_value {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
            match self.value.parse::<$ty>() {
                Ok(v) => visitor.$visit(v),
                Err(_) => Err(PathError(format!(
                    "invalid path parameter `{}`: expected {}, got {:?}",
                    self.name,
                    stringify!($ty),
                    self.value
                ))),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_borrowed_str(self.value)
    }

    parse_value! {
        deserialize_bool => visit_bool: bool,
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_i128 => visit_i128: i128,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
        deserialize_u128 => visit_u128: u128,
        deserialize_f32 => visit_f32: f32,
        deserialize_f64 => visit_f64: f64,
        deserialize_char => visit_char: char,
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        visitor.visit_enum(self.value.into_deserializer())
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

struct Seq<'a> {
    iter: std::slice::Iter<'a, (String, String)>,
}

impl<'de> de::SeqAccess<'de> for Seq<'de> {
    type Error = PathError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, PathError> {
        match self.iter.next() {
            Some((name, value)) => seed
                .deserialize(ValueDeserializer { name, value })
                .map(Some),
            None => Ok(None),
        }
    }
}

impl<'de> PathDeserializer<'de> {
    fn single(&self) -> Result<ValueDeserializer<'de>, PathError> {
        match self.params {
            [(name, value)] => Ok(ValueDeserializer { name, value }),
            _ => Err(PathError(format!(
                "route has {} path parameters; extract a tuple or a struct",
                self.params.len()
            ))),
        }
    }

    fn map(
        &self,
    ) -> MapDeserializer<'de, impl Iterator<Item = (&'de str, ValueDeserializer<'de>)>, PathError>
    {
        MapDeserializer::new(
            self.params
                .iter()
                .map(|(n, v)| (n.as_str(), ValueDeserializer { name: n, value: v })),
        )
    }
}

macro_rules! forward_single {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
            self.single()?.$method(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for PathDeserializer<'de> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        self.map().deserialize_any(visitor)
    }

    forward_single!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_option
    );

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        self.single()?.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_seq(Seq {
            iter: self.params.iter(),
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        if len != self.params.len() {
            return Err(PathError(format!(
                "expected {len} path parameters, route has {}",
                self.params.len()
            )));
        }
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        self.map().deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        self.map().deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bytes byte_buf unit unit_struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn de<T: serde::de::DeserializeOwned>(p: &[(&str, &str)]) -> Result<T, PathError> {
        let p = params(p);
        T::deserialize(PathDeserializer { params: &p })
    }

    #[test]
    fn single_tuple_struct() {
        assert_eq!(de::<u32>(&[("id", "42")]).unwrap(), 42);
        assert_eq!(de::<String>(&[("room", "general")]).unwrap(), "general");
        assert_eq!(
            de::<(String, u8)>(&[("a", "x"), ("b", "7")]).unwrap(),
            ("x".into(), 7)
        );
        #[derive(Deserialize, Debug, PartialEq)]
        struct P {
            room: String,
            page: u16,
        }
        assert_eq!(
            de::<P>(&[("room", "r"), ("page", "3")]).unwrap(),
            P {
                room: "r".into(),
                page: 3
            }
        );
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = de::<u32>(&[("id", "abc")]).unwrap_err();
        assert_eq!(
            e.0,
            "invalid path parameter `id`: expected u32, got \"abc\""
        );
        assert!(de::<u32>(&[("a", "1"), ("b", "2")]).is_err());
        assert!(de::<(u32, u32, u32)>(&[("a", "1"), ("b", "2")]).is_err());
    }
}

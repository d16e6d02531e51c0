package io.streamjob.bench;

/** A new person (Flink POJO: public fields, no-arg constructor). Mirrors nexmark.rs {@code Person}. */
public class Person {
    public long id;
    public String name;
    public String emailAddress;
    public String creditCard;
    public String city;
    public String state;
    public long dateTime;

    public Person() {}

    @Override
    public String toString() {
        return "person," + id + "," + name + "," + emailAddress + "," + creditCard + "," + city + ","
                + state + "," + dateTime;
    }
}
